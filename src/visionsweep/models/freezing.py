"""``layers_to_freeze``: freeze the first k layer groups of a model, BatchNorm statistics included."""
from __future__ import annotations

from torch import nn

from visionsweep.errors import SettingsError


def freeze_layer_groups(model: nn.Module, model_name: str, groups: tuple[tuple[str, ...], ...], count: int) -> None:
    """Stop gradients for every parameter under the first ``count`` groups of name prefixes.

    Every other parameter is made trainable. BatchNorm layers that lie wholly in the frozen groups
    also stop updating their running statistics: ``train_mode`` keeps them in eval mode.
    """
    if count > len(groups):
        names = ", ".join("+".join(p.rstrip(".") for p in group) for group in groups)
        raise SettingsError([f"layers_to_freeze: got {count}; {model_name} has {len(groups)} layer groups "
                             f"({names}), so use 0 to {len(groups)}"])
    prefixes = tuple(prefix for group in groups[:count] for prefix in group)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(prefixes))


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that norm layers whose parameters are all frozen stay in eval mode,
    so frozen layers keep their pretrained running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters(recurse=False))
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()
    return model
