"""What a trial does after running out of memory, or losing a data-loading worker: the settings to retry with.

A CUDA out-of-memory error retries with half the batch and twice ``grad_accumulation_step``, so that an
optimizer step still sees as many images, down to batch 1 (beyond the reference, which fails the trial).
A data-loading worker that died (killed for memory, or crashed) retries with ``num_workers`` 0, as the
reference does. Each retry is a new attempt of the same trial; ``visionsweep.sweep.trial_process`` makes
it continue from the trial's last saved epoch when there is one.
"""
from __future__ import annotations

from typing import Any, Mapping

# How DataLoader reports a worker process that died.
_WORKER_FAILURES = ("DataLoader worker", "worker exited unexpectedly", "is killed by signal")


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or other accelerator) allocation failure: ``torch.OutOfMemoryError`` or its message."""
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


def is_worker_failure(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _WORKER_FAILURES)


def retry_settings(error: BaseException, settings: Mapping[str, Any], resolved: Any) -> tuple[dict[str, Any], str] | None:
    """The settings of the next attempt after ``error`` and a line saying why, or None when ``error`` is not
    one to retry (or the batch is 1 already). ``settings`` are the trial's given values; ``resolved`` the
    same resolved (the defaults it leaves out)."""
    if is_out_of_memory(error):
        batch = int(settings.get("training_batch_size", resolved.training_batch_size))
        if batch <= 1:
            return None
        steps = int(settings.get("grad_accumulation_step", resolved.grad_accumulation_step))
        smaller = {**settings, "training_batch_size": batch // 2, "grad_accumulation_step": steps * 2}
        return smaller, (f"out of memory at training_batch_size {batch}: retrying with training_batch_size "
                         f"{batch // 2} and grad_accumulation_step {steps * 2} (the same images per step)")
    if is_worker_failure(error):
        workers = int(settings.get("num_workers", resolved.num_workers))
        if workers == 0:
            return None
        return {**settings, "num_workers": 0}, f"a data-loading worker failed ({error}): retrying with num_workers 0"
    return None
