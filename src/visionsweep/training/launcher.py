"""Starting the processes of a distributed run with PyTorch's own launcher (``torch.distributed.run``).

``visionsweep train --nproc-per-node N`` (and a sweep trial given several GPUs) calls the launcher in its
own process, which starts N copies of the command with the launcher's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), watches them, stops all of them as soon
as one fails, and reports which. One machine rendezvouses on a free local port unless ``master_port`` is
given; several machines (``nnodes``) meet at ``master_addr:master_port``, every machine started with the
same ``nnodes``, address and port and its own ``node_rank``.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from visionsweep.distributed import DistributedError, rendezvous_error
from visionsweep.errors import SettingsError

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """How many processes to start, here and on the other machines of the run."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def problems(self) -> list[str]:
        found = []
        if self.nproc_per_node < 1:
            found.append(f"--nproc-per-node: got {self.nproc_per_node}; use 1 or more processes")
        if self.nnodes < 1:
            found.append(f"--nnodes: got {self.nnodes}; use 1 or more machines")
        elif not 0 <= self.node_rank < self.nnodes:
            found.append(f"--node-rank: got {self.node_rank}; use 0 to {self.nnodes - 1} (one per machine)")
        if self.nnodes > 1 and not self.master_addr:
            found.append("--master-addr: a run on several machines needs the address of the machine of "
                         "--node-rank 0, the same on every machine")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            found.append(f"--master-port: got {self.master_port}; use a free TCP port (1 to 65535)")
        return found


def processes_per_node(requested: int | None, *, distributed: bool, device: str, gpus: int) -> int:
    """``requested``, or by default one process per GPU when the run may be distributed and trains on
    CUDA (``device`` auto or cuda, not one named GPU) with more than one GPU (as the reference), else one."""
    if requested is not None:
        if requested > 1 and not distributed:
            raise SettingsError([f"distributed: false, but --nproc-per-node {requested} asks for {requested} "
                                 "processes; set distributed true, or leave --nproc-per-node out"])
        return requested
    return gpus if distributed and device in ("auto", "cuda") and gpus > 1 else 1


def torchrun_arguments(launch: Launch, command: Sequence[str]) -> list[str]:
    """The launcher's command line that starts ``command`` (a Python module and its arguments, or with
    ``--no-python`` first, any program)."""
    arguments = [f"--nproc-per-node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}"]
    if launch.nnodes == 1 and launch.master_port is None:
        arguments.append("--standalone")  # a free port on this machine: concurrent runs never collide
    else:
        arguments += [f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr or '127.0.0.1'}",
                      f"--master-port={launch.master_port or DEFAULT_MASTER_PORT}"]
    return [*arguments, *command]


def launch_processes(launch: Launch, command: Sequence[str]) -> None:
    """Run ``command`` as the processes of ``launch`` and wait for all of them; ``DistributedError``
    naming the ranks that failed, with their exit status, when any did (the others are stopped)."""
    problems = launch.problems()
    if problems:
        raise SettingsError(problems)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    arguments = torchrun.parse_args(torchrun_arguments(launch, command))
    log.info("starting %d processes on this machine (%d in all)", launch.nproc_per_node, launch.world_size)
    sys.stdout.flush()
    try:
        torchrun.run(arguments)
    except ChildFailedError as error:
        raise DistributedError(_failures(error)) from None
    except DistributedError:
        raise
    except Exception as error:  # the launcher's own rendezvous: a busy port, a machine that never came
        raise rendezvous_error(error) from None


def _failures(error: BaseException) -> str:
    failures = getattr(error, "failures", {}) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        code = failure.exitcode
        what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if code == -9:
            what += " (SIGKILL: usually the kernel stopping it because the machine was out of memory; see `dmesg`)"
        parts.append(f"rank {rank} {what}")
    return ("the distributed run failed: " + ("; ".join(parts) or str(error))
            + ". Its error is printed above, and in the run folder's train.log (rank 0) or train-R.log (rank R); "
              "the other processes were stopped")
