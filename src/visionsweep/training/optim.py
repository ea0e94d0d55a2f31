"""Optimizers with parameter groups: no weight decay on biases, norm layers, tokens and embeddings."""
from __future__ import annotations

import torch
from torch import nn

from visionsweep.errors import SettingsError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group (weights of conv and linear layers) and two
    undecayed ones: biases (the group named ``"bias"``, whose warm-up may start elsewhere, see
    ``schedulers.Schedule``'s ``warmup_bias_lr``), and every other 1-d parameter such as norm scales with what the model
    lists in ``no_weight_decay()``, e.g. a ViT's class token and position embedding. Frozen parameters
    are left out."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, biases, no_decay = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith(".bias"):
            biases.append(parameter)
        elif parameter.ndim <= 1 or name in exempt:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": biases, "weight_decay": 0.0, "name": "bias"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(
    model: nn.Module,
    optimizer: str,
    *,
    learning_rate: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    beta1: float,
    beta2: float,
    amsgrad: bool,
) -> torch.optim.Optimizer:
    """sgd (momentum, nesterov), adam (L2 weight decay) or adamw (decoupled weight decay)."""
    groups = parameter_groups(model, weight_decay)
    if not any(group["params"] for group in groups):
        raise SettingsError(["layers_to_freeze: every parameter is frozen, nothing would train; freeze fewer groups"])
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    if optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        return kind(groups, lr=learning_rate, betas=(beta1, beta2), amsgrad=amsgrad)
    raise SettingsError([f"optimizer: got {optimizer!r}; allowed: sgd, adam, adamw"])
