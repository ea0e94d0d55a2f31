"""Reading tensor files that other people made (checkpoints, weights) without running anything from them.

The one place that opens PyTorch and safetensors files. A PyTorch file is unpickled with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists, tuples and dicts (and torch's
own tensor, dtype and size types) are built; any other object the pickle names is refused before it is
created, so a ``__reduce__`` payload never runs. The explicit ``weights_only=True`` also wins over the
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable. Before unpickling, the container is checked:
no PyTorch 0.3 tar file (torch would unpack it to disk) and no compressed zip record (a zip bomb), so the
tensors a load builds are never larger than the file. The vendor's pickled YOLOv5 release files are the one
other reader, with an unpickler that builds nothing but tensors (``models/yolo/weights.py``), and the same
container check.
"""
from __future__ import annotations

import pickle
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from visionsweep.errors import VisionSweepError

_ZIP_MAGIC = b"PK\x03\x04"


def load_torch_file(path: Path, error: type[VisionSweepError]) -> Any:
    """The content of a ``torch.save`` file, if it holds only tensors and plain data.

    Anything else (a pickled object, a truncated or corrupt file, a container that ``check_torch_container``
    refuses) raises ``error`` with a message naming ``path``.
    """
    check_torch_container(path, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as caught:
        refused = _refusal(caught)
        if refused is None:
            raise error(f"{path} is not a readable PyTorch file (truncated or corrupt: {_detail(caught)})") from None
        raise error(f"{path} is refused unread: {refused}. visionsweep's checkpoints and weights hold only tensors, "
                    "numbers, strings, lists and dicts in torch.save's default format; a file with more was written "
                    "by other code or altered. Get the file from its source again, or save its state dict with "
                    "safetensors.torch.save_file") from None
    except Exception as caught:  # a corrupt file fails in many ways (zip, pickle, storage sizes); all mean this
        raise error(f"{path} is not a readable PyTorch file (truncated or corrupt: {_detail(caught)})") from None


def check_torch_container(path: Path, error: type[VisionSweepError]) -> None:
    """Refuse, before anything is unpickled, the containers torch.load would unpack unsafely: the tar format
    of PyTorch 0.3 and zip files with compressed records. Every reader of PyTorch files calls this first."""
    try:
        tar_format = _is_tar_format(path)
    except OSError as caught:
        raise error(f"{path} cannot be read: {caught.strerror or caught}") from None
    if tar_format:
        # torch would extract its members to a temporary folder; nothing visionsweep reads is that old.
        raise error(f"{path} is in the tar format of PyTorch 0.3 and earlier, which visionsweep does not read; "
                    "load it with that PyTorch and save its state dict again")
    compressed = _compressed_record(path)
    if compressed is not None:
        raise error(f"{path} is refused unread: its record {compressed} is compressed. torch.save never compresses, "
                    "and a compressed record can expand to a thousand times the file's size in memory; save the "
                    "file again with torch.save")


def load_safetensors_file(path: Path, error: type[VisionSweepError]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated file or a bad header raises ``error`` naming ``path``."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as caught:  # SafetensorError for a bad header or short data, OSError for the file itself
        raise error(f"{path} is not a readable safetensors file (truncated or corrupt: {_detail(caught)})") from None


def _is_tar_format(path: Path) -> bool:
    with open(path, "rb") as handle:
        if handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            return False
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _compressed_record(path: Path) -> str | None:
    """The first record of a zip-format file that is not stored as is (a zip bomb's way in), or None.

    Uncompressed records bound the memory a load takes by the file's size. A file that is not a readable
    zip is left to torch.load, which reports it as corrupt.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.compress_type != zipfile.ZIP_STORED or record.file_size != record.compress_size:
                    return record.filename
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return None


def _refusal(error: pickle.UnpicklingError) -> str | None:
    """Why torch's weights-only unpickler refused the file, as a clause; None for a pickle that is merely broken."""
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found is not None:
        return (f"besides tensors and plain data it holds the Python object {found.group(1)}, and building it could "
                "run code from the file")
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = found.group(1).strip().rstrip(".") if found is not None else "unknown"
    return f"it is damaged, or uses pickle instructions that loading without running code does not allow ({reason})"


def _detail(error: Exception) -> str:
    """The first sentence of an error, without terminal colour codes; the type name when it says nothing."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
