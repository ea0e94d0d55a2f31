"""Learning-rate schedules as pure functions of the step, and the scheduler objects built from them.

warmup_cosine is applied per optimizer step; step per epoch. The reference evaluated the warmup
factor at the step index before the step, so its first optimizer step used a learning rate of 0;
here optimizer step ``k`` (0-based) uses ``factor(k + 1)``, so no step is wasted and the last step
uses the final factor of the reference curve.
"""
from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, cycles: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then a cosine over the rest.

    ``factor = step / warmup_steps`` during warmup, then ``max(0, (1 + cos(2 pi cycles progress)) / 2)``
    with ``progress = (step - warmup_steps) / (total_steps - warmup_steps)``. With cycles 0.45 the
    curve ends at about 0.0245; cycles 0.5 ends at 0.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))


def step_factor(epoch: int, step_size: int, gamma: float) -> float:
    """Multiplier of the base learning rate in ``epoch`` (0-based): ``gamma ** (epoch // step_size)``."""
    return gamma ** (epoch // step_size)


class Schedule:
    """Drives the optimizer's learning rate; the loop calls ``after_optimizer_step`` and ``after_epoch``.

    A ``warmup_cosine`` warm-up takes every learning rate from 0 to its value; ``warmup_bias_lr`` starts the
    biases' (the parameter group named "bias") there instead, and ``warmup_momentum`` starts the SGD
    momentum (or Adam's beta1) there. Each goes linearly to the schedule's value over the warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, *, steps_per_epoch: int, epochs: int,
                 warmup_epochs: int = 2, cycles: float = 0.45, step_size: int = 5, gamma: float = 0.5,
                 warmup_bias_lr: float | None = None, warmup_momentum: float | None = None):
        self.optimizer = optimizer
        self.kind = kind
        self.warmup_bias_lr, self.warmup_momentum = warmup_bias_lr, warmup_momentum
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.base_momenta = [group.get("momentum", group.get("betas", (None,))[0])  # SGD's, or Adam's beta1
                             for group in optimizer.param_groups]
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = steps_per_epoch * warmup_epochs
        self.total_steps = steps_per_epoch * epochs
        self.cycles, self.step_size, self.gamma = cycles, step_size, gamma
        self.step = 0
        self.epoch = 0
        self._apply()

    def factor(self) -> float:
        if self.kind == "warmup_cosine":
            return warmup_cosine_factor(self.step + 1, self.warmup_steps, self.total_steps, self.cycles)
        return step_factor(self.epoch, self.step_size, self.gamma)

    def after_optimizer_step(self) -> None:
        self.step += 1
        self._apply()

    def after_epoch(self) -> None:
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        """The position in the schedule: optimizer steps and epochs done (all a resumed run needs: the
        curve itself is rebuilt from the settings)."""
        return {"step": self.step, "epoch": self.epoch, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state`` 's position. A resumed run may take another number of optimizer steps per
        epoch (another batch size or accumulation): the step count is then rescaled, so that the run goes on
        from the same point of the curve."""
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        saved_steps_per_epoch = int(state.get("steps_per_epoch", self.steps_per_epoch))
        if saved_steps_per_epoch != self.steps_per_epoch and saved_steps_per_epoch > 0:
            self.step = round(self.step * self.steps_per_epoch / saved_steps_per_epoch)
        self._apply()

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _apply(self) -> None:
        factor = self.factor()
        # How far the warm-up has gone: 1 after it, and always for the step schedule.
        warming = self.kind == "warmup_cosine" and self.step + 1 < self.warmup_steps
        done = (self.step + 1) / self.warmup_steps if warming else 1.0
        for group, base, momentum in zip(self.optimizer.param_groups, self.base_lrs, self.base_momenta):
            group["lr"] = base * factor
            if self.warmup_bias_lr is not None and group.get("name") == "bias" and done < 1.0:
                group["lr"] = self.warmup_bias_lr * (1.0 - done) + base * factor
            if self.warmup_momentum is not None and momentum is not None:
                value = self.warmup_momentum * (1.0 - done) + momentum * done
                if "betas" in group:
                    group["betas"] = (value, group["betas"][1])
                else:
                    group["momentum"] = value
