"""Early stopping on the primary metric, with the reference's patience and delay semantics."""
from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Tracks the best epoch and decides when training stops.

    Epochs are counted from 1. On every evaluated epoch ``n`` with score ``s``: once past the first
    ``delay`` epochs (``n > delay``, the reference's ``e >= delay`` over 0-based indices) the
    no-progress counter grows by one; a score strictly better than the best resets it to 0; a score
    at least as good as the best makes this epoch the best (so ties move the best to the later
    epoch). Training stops once the counter reaches ``patience``: ``delay`` counts epochs,
    ``patience`` evaluations. A NaN score is never best. Unlike the reference, the best starts at
    minus infinity, so a first evaluation scoring 0 still becomes the best epoch.
    """

    def __init__(self, *, patience: int, delay: int, enabled: bool = True):
        self.patience = patience
        self.delay = delay
        self.enabled = enabled
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.counter = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record the score of evaluated ``epoch`` (counted from 1); return whether it is the new best."""
        if epoch > self.delay:
            self.counter += 1
        if score > self.best_score:
            self.counter = 0
        if score >= self.best_score:
            self.best_score, self.best_epoch = score, epoch
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.counter >= self.patience

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to take the same decisions (plain data, for a checkpoint)."""
        return {"best_epoch": self.best_epoch, "best_score": self.best_score, "counter": self.counter,
                "should_stop": self.should_stop}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``. ``should_stop`` follows from the counter (patience and enabled are
        settings a resumed run keeps), so it is stored for the reader of the file, not read back."""
        self.best_epoch = state["best_epoch"]
        self.best_score = float(state["best_score"])
        self.counter = int(state["counter"])
