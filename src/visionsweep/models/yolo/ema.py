"""Exponential moving average of a model's weights, with the YOLOv5 warm-up of the decay."""
from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Keep ``module``, an eval-mode copy of ``model`` whose floating-point state (parameters and
    BatchNorm statistics) follows the trained model as an exponential moving average.

    After the u-th ``update`` the copy is ``d * ema + (1 - d) * model`` with
    ``d = decay * (1 - exp(-u / ramp))``: early updates mostly copy the model, later ones average
    over roughly ``1 / (1 - decay)`` steps. Integer buffers (BatchNorm's batch counters) are left as
    they are. ``updates`` is the count to store in a checkpoint and pass back when resuming.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, ramp: float = 2000.0, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay}")
        if ramp <= 0:
            raise ValueError(f"ramp must be positive; got {ramp}")
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.ramp = ramp
        self.updates = updates

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.ramp))

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count: what continues the average in a resumed run."""
        return {"module": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current state into the average; call after every optimizer step."""
        d = self.current_decay()
        self.updates += 1
        averaged = _floating_state(self.module)
        latest = [t.detach() for t in _floating_state(_unwrap(model))]
        if len(averaged) != len(latest):
            raise ValueError("ModelEMA.update got a model with a different structure from the one it averages")
        # ema + (1 - d) * (model - ema) == d * ema + (1 - d) * model, for all tensors in one call.
        torch._foreach_lerp_(averaged, latest, 1.0 - d)


def _floating_state(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and floating-point buffers, in registration order (the same for a model and its copy).
    Cheaper than two ``state_dict()`` calls, which matters when called after every step."""
    return [t for t in itertools.chain(module.parameters(), module.buffers()) if t.dtype.is_floating_point]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
