"""Pretrained weights: from an explicit file, the local cache, or a download, in that order.

Direct URLs (torchvision's files) are cached in PyTorch's hub folder (``$TORCH_HOME/hub/checkpoints``);
Hugging Face files (timm's) in the Hugging Face cache (``$HF_HOME``). Set ``VISIONSWEEP_OFFLINE=1``
(or ``HF_HUB_OFFLINE=1``) to never try the network.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from visionsweep.errors import WeightsUnavailableError
from visionsweep.tensor_files import load_safetensors_file, load_torch_file

log = logging.getLogger(__name__)

_DOWNLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's pretrained weights live: a direct ``url``, or a file in a Hugging Face ``hf_repo``.

    ``reader`` turns a weights file (downloaded, cached or given explicitly) into a state dict, for models
    whose published files are not plain state dicts; without it ``read_state_dict`` reads them.
    """

    filename: str
    url: str | None = None
    hf_repo: str | None = None
    reader: Callable[[Path], dict[str, torch.Tensor]] | None = None

    def cache_path(self) -> Path:
        """Where the file is (or would be) in the local cache."""
        if self.hf_repo is not None:
            from huggingface_hub import constants

            folder = "models--" + self.hf_repo.replace("/", "--")
            return Path(constants.HF_HUB_CACHE) / folder / "snapshots" / "<revision>" / self.filename
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def cached_file(self) -> Path | None:
        if self.hf_repo is not None:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(self.hf_repo, self.filename)
            return Path(found) if isinstance(found, str) else None
        path = self.cache_path()
        return path if path.is_file() else None

    def download(self) -> Path:
        if self.hf_repo is not None:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(self.hf_repo, self.filename))
        path = self.cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.url, str(path), progress=False)
        return path


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in
               ("VISIONSWEEP_OFFLINE", "HF_HUB_OFFLINE"))


def find_weights(model_name: str, source: WeightsSource | None, explicit_file: str | os.PathLike | None, *,
                 what: str = "pretrained weights", attempts: int = _DOWNLOAD_ATTEMPTS) -> Path:
    """Return a local file of ``model_name`` (its pretrained weights, or ``what`` else, such as a Hugging
    Face model's config), downloading it into the cache if needed."""
    if explicit_file is not None:
        path = Path(explicit_file)
        if not path.is_file():
            raise WeightsUnavailableError(f"pretrained_weights file {path} does not exist")
        return path
    if source is None:
        raise WeightsUnavailableError(
            f"{model_name} has no published pretrained weights; give a file with pretrained_weights=PATH, "
            "or set pretrained=false to train from scratch")
    cached = source.cached_file()
    if cached is not None:
        return cached
    where = source.url or f"the Hugging Face repository {source.hf_repo}"
    hint = (f"Put the file at {source.cache_path()} (from {where}; 'visionsweep weights download {model_name}' on "
            f"a connected machine, then 'visionsweep weights import' here)")
    hint += ", pass pretrained_weights=PATH, or set pretrained=false to train from scratch." \
        if what == "pretrained weights" else "."
    if offline():
        raise WeightsUnavailableError(
            f"no {what} for {model_name}: not in the cache and downloads are off (offline mode). {hint}")
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            return source.download()
        except Exception as caught:  # network libraries raise many types; all mean "not downloaded"
            error = caught
            if attempts > 1:
                log.warning("download of %s %s failed (attempt %d of %d): %s", model_name, what, attempt + 1,
                            attempts, caught)
            if attempt + 1 < attempts:
                time.sleep(2**attempt)
    raise WeightsUnavailableError(
        f"no {what} for {model_name}: not in the cache and the download failed "
        f"({type(error).__name__}: {error}). {hint}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or PyTorch weights file; unwrap the usual ``state_dict`` / ``model`` nesting.

    Neither runs anything from the file (``visionsweep.tensor_files``); a file that is corrupt, or holds
    pickled objects besides tensors and plain data, raises WeightsUnavailableError naming it.
    """
    if path.suffix == ".safetensors":
        return load_safetensors_file(path, WeightsUnavailableError)
    state = load_torch_file(path, WeightsUnavailableError)
    for key in ("model_state", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of tensors")
    return state


def load_pretrained(
    model: nn.Module,
    model_name: str,
    path: Path,
    source: WeightsSource | None,
    explicit_file: str | os.PathLike | None,
    *,
    skip_prefixes: tuple[str, ...] = (),
    adapt: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None,
) -> list[str]:
    """Load the weights file ``path`` (``find_weights``: ``explicit_file``, or the cached download of
    ``source``) into ``model`` where names and shapes match; return the loaded keys.

    Keys under ``skip_prefixes`` (the classifier head) are never loaded. Raises when nothing matches,
    which means the file belongs to another architecture.
    """
    try:
        state = source.reader(path) if source is not None and source.reader is not None else read_state_dict(path)
    except WeightsUnavailableError as error:
        if explicit_file is not None:
            raise
        raise WeightsUnavailableError(f"{error}. It is the cached download of {model_name}'s weights: delete it "
                                      "to download it again, or pass pretrained_weights=PATH") from None
    if adapt is not None:
        state = adapt(state, model)
    loaded = load_matching(model, state, skip_prefixes=skip_prefixes)
    if not loaded:
        raise WeightsUnavailableError(
            f"{path} shares no parameter (by name and shape) with {model_name}; is it the weights of another model?")
    return loaded


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, skip_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Copy the entries of ``state`` whose name and shape match ``model``; return their names.

    Entries under ``skip_prefixes`` are left out. Parameters not filled keep their values (logged).
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and v.shape == own[k].shape and not k.startswith(skip_prefixes)}
    if not usable:
        return []
    model.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable and not k.startswith(skip_prefixes)
               and not k.endswith("num_batches_tracked")]
    if missing:
        log.warning("%d parameters had no match and keep their initial values (e.g. %s)",
                    len(missing), ", ".join(missing[:3]))
    return sorted(usable)
