"""Devices and seeds: which device a run uses, seeding every random generator from the run's seed, and
the generators' states, which a resumed run restores to draw what the interrupted run would have drawn."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from visionsweep.errors import SettingsError


def select_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    gpus = visible_gpu_count()
    problem = device_problem(device, gpus)
    if problem is not None:
        raise SettingsError([problem])
    if device == "auto":
        return torch.device("cuda" if gpus else "cpu")
    return torch.device(device)


def device_problem(device: str, gpus: int) -> str | None:
    """Why ``device`` cannot be used by a process that sees ``gpus`` CUDA GPUs; None when it can.
    The one place that decides, for a run here and for the trials of a sweep (which see one GPU or none)."""
    if device == "auto":
        return None
    try:
        chosen = torch.device(device)
    except RuntimeError:
        return f"device: got {device!r}; use auto, cpu, cuda or cuda:N"
    if chosen.type == "cuda" and not gpus:
        return f"device: got {device!r} but no CUDA GPU is available; use auto or cpu"
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= gpus:
        return f"device: got {device!r} but only {gpus} GPU(s) exist"
    return None


def visible_gpu_count() -> int:
    """The CUDA GPUs this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; optionally ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def random_states() -> dict[str, Any]:
    """The state of every global generator a run draws from (torch's CPU one, CUDA's when present, NumPy's
    global one, Python's ``random``) as tensors and plain data, so that a checkpoint holding it loads with
    ``weights_only``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def restore_random_states(states: dict[str, Any]) -> None:
    """Put back the generators ``random_states`` recorded. CUDA states are restored for the GPUs present
    (a process uses one; the others' states matter to nobody)."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        for index, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def generator_state(rng: np.random.Generator | None) -> dict[str, Any] | None:
    """The state of a NumPy generator as plain data (None for no generator)."""
    return None if rng is None else rng.bit_generator.state


def generator_from_state(state: dict[str, Any] | None) -> np.random.Generator | None:
    """A generator (of ``default_rng`` 's kind) in ``state`` (from ``generator_state``)."""
    if state is None:
        return None
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
