"""The processes that train one run together (PyTorch DDP): who this process is, and what they exchange.

A distributed run is started by PyTorch's own launcher (``torch.distributed.run``, i.e. torchrun, which
``visionsweep train --nproc-per-node N`` calls), which gives every process ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in its environment; ``ranks_from_environment`` reads them, and a process started any other
way is the single process of its run (``SINGLE_PROCESS``). NCCL is the backend on CUDA, gloo on the CPU.

The ranks exchange tensors (DDP's gradient reduction) and, at validation, each rank's share of the
validation results (``Ranks.gather``). Those go as a tensor of bytes in a format that cannot run code when
read (JSON for the structure, safetensors for the arrays), not as pickles, as everything visionsweep reads.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import nn

from visionsweep.errors import VisionSweepError


class DistributedError(VisionSweepError):
    """The processes of a distributed run could not start or reach each other."""


# How long a collective waits for a rank that stopped answering before the run fails. A rank that
# dies is noticed at once by the launcher, which stops the others; this bounds a rank that hangs.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# The seed of a distributed run whose settings leave it unset: every process must shuffle and initialise
# alike, so it cannot be drawn in each (the reference's value).
DISTRIBUTED_SEED = 47


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world_size`` processes of a run: ``rank`` over all machines,
    ``local_rank`` on its machine (its GPU index). Collectives run on ``backend`` 's device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = "gloo"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs metrics and writes checkpoints and artifacts."""
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank. ``value`` is plain data (None, bool, int,
        float, str, bytes, lists, dicts with string keys) and NumPy arrays; tuples come back as lists."""
        if not self.is_distributed:
            return [value]
        payload = torch.from_numpy(np.frombuffer(encode_plain(value), dtype=np.uint8).copy()).to(self._device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=self._device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        torch.distributed.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self._device)
        padded[:payload.numel()] = payload
        shares = [torch.zeros_like(padded) for _ in range(self.world_size)]
        torch.distributed.all_gather(shares, padded)
        return [decode_plain(share[:int(s.item())].cpu().numpy().tobytes()) for share, s in zip(shares, sizes)]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a stop asked for by one process stops them all)."""
        if not self.is_distributed:
            return flag
        value = torch.tensor([int(flag)], device=self._device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE_PROCESS = Ranks()


def launched_world_size() -> int:
    """How many processes the launcher started for this run (1 when none did)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def ranks_from_environment(device_type: str) -> Ranks:
    """The ranks the launcher gave this process (``SINGLE_PROCESS`` when none did); ``device_type`` "cuda"
    uses NCCL, anything else gloo."""
    if launched_world_size() <= 1:
        return SINGLE_PROCESS
    return Ranks(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 world_size=launched_world_size(), backend="nccl" if device_type == "cuda" else "gloo")


def process_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: GPU ``local_rank`` when the run trains on CUDA (one GPU per process)."""
    if not ranks.is_distributed or device.type != "cuda":
        return device
    gpus = torch.cuda.device_count()
    if ranks.local_rank >= gpus:
        raise DistributedError(f"rank {ranks.rank} is process {ranks.local_rank + 1} of its machine, which has "
                               f"{gpus} GPU(s): start at most {gpus} processes per machine (--nproc-per-node)")
    return torch.device("cuda", ranks.local_rank)


def start_process_group(ranks: Ranks) -> bool:
    """Join the run's other processes (the launcher's rendezvous, ``MASTER_ADDR``/``MASTER_PORT``); False when
    there is nothing to join, or the caller's own program has joined already (it then also leaves).
    Failures become a ``DistributedError`` that says what to check."""
    if not ranks.is_distributed or torch.distributed.is_initialized():
        return False
    if ranks.backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    try:
        torch.distributed.init_process_group(ranks.backend, rank=ranks.rank, world_size=ranks.world_size,
                                             timeout=COLLECTIVE_TIMEOUT)
    except Exception as error:  # the backends raise RuntimeError, DistStoreError, ValueError...
        raise rendezvous_error(error, ranks.rank) from None
    return True


def stop_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rendezvous_error(error: BaseException, rank: int | None = None) -> DistributedError:
    """A clear error for a failed rendezvous: a busy port or a timeout (another job on the same GPUs or
    port, or a machine that never joined) gets advice; anything else says what failed."""
    text = str(error)
    where = "" if rank is None else f" (rank {rank})"
    if "Address already in use" in text or "EADDRINUSE" in text:
        return DistributedError(
            f"the distributed run could not start{where}: its rendezvous port is in use ({type(error).__name__}); "
            "another run uses the same --master-port: give this one another port, or run one at a time "
            "(max_concurrent_trials 1 when trials share the machine's GPUs)")
    if "timed out" in text.lower() or "timeout" in text.lower():
        return DistributedError(
            f"the distributed run timed out waiting for its processes{where} ({type(error).__name__}): check "
            "that every machine started with the same --nnodes, --master-addr and --master-port, that the "
            "address is reachable from every machine, and that no other job holds these GPUs")
    return DistributedError(f"the distributed run could not start{where}: {type(error).__name__}: {text}")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (the network itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- the exchange format: JSON for the structure, one safetensors block for the arrays ---------------------

def encode_plain(value: Any) -> bytes:
    """``value`` (see ``Ranks.gather``) as bytes that ``decode_plain`` reads back without running code."""
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}

    def encode(item: Any) -> Any:
        if isinstance(item, np.ndarray):
            name = str(len(arrays))
            arrays[name] = np.ascontiguousarray(item)
            return {"__array__": name}
        if isinstance(item, (bytes, bytearray)):
            return {"__bytes__": base64.b64encode(bytes(item)).decode("ascii")}
        if isinstance(item, dict):
            if "__array__" in item or "__bytes__" in item or not all(isinstance(k, str) for k in item):
                raise TypeError("gathered dicts need string keys other than '__array__' and '__bytes__'")
            return {key: encode(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [encode(inner) for inner in item]
        if isinstance(item, np.generic):
            return item.item()
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        raise TypeError(f"cannot exchange a {type(item).__name__} between processes; use plain data and arrays")

    structure = json.dumps(encode(value)).encode("utf-8")
    block = save(arrays) if arrays else b""
    return len(structure).to_bytes(8, "little") + structure + block


def decode_plain(data: bytes) -> Any:
    from safetensors.numpy import load

    length = int.from_bytes(data[:8], "little")
    structure = json.loads(data[8:8 + length].decode("utf-8"))
    arrays = load(data[8 + length:]) if len(data) > 8 + length else {}

    def decode(item: Any) -> Any:
        if isinstance(item, dict):
            if "__array__" in item:
                return arrays[item["__array__"]]
            if "__bytes__" in item:
                return base64.b64decode(item["__bytes__"])
            return {key: decode(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [decode(inner) for inner in item]
        return item

    return decode(structure)
