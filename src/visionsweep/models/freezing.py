"""``layers_to_freeze``: freeze the first k layer groups of a model, BatchNorm statistics included."""
from __future__ import annotations

from torch import nn

from visionsweep.errors import SettingsError


def freeze_layer_groups(model: nn.Module, model_name: str, groups: tuple[tuple[str, ...], ...], count: int) -> None:
    """Stop gradients for every parameter under the first ``count`` groups of name prefixes.

    Every other parameter is made trainable. BatchNorm layers that lie wholly in the frozen groups
    also stop updating their running statistics: ``train_mode`` keeps them in eval mode.
    """
    problem = layers_to_freeze_problem(model_name, groups, count)
    if problem is not None:
        raise SettingsError([problem])
    prefixes = tuple(prefix for group in groups[:count] for prefix in group)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(prefixes))


def layers_to_freeze_problem(model_name: str, groups: tuple[tuple[str, ...], ...], count: int | None) -> str | None:
    """Why ``layers_to_freeze=count`` does not fit a model with these layer groups; None when it does."""
    if count is None or count <= len(groups):
        return None
    if not groups:
        return (f"layers_to_freeze: got {count}; visionsweep does not know the layer groups of {model_name} "
                "(a Hugging Face model, or a timm model without a group matcher), so it cannot freeze any; "
                "leave layers_to_freeze unset, or use a timm or catalog model")
    names = ", ".join("+".join(p.rstrip(".") for p in group) for group in groups)
    return (f"layers_to_freeze: got {count}; {model_name} has {len(groups)} layer groups ({names}), "
            f"so use 0 to {len(groups)}")


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
