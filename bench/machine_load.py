"""How busy the machine was during a timed stretch: these VMs are shared, so the benches record it."""
from __future__ import annotations

import os
import time
from pathlib import Path


def machine_busy() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds the whole machine was busy, this process's CPU seconds) now."""
    busy = 0.0
    if Path("/proc/stat").exists():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return time.perf_counter(), busy, time.process_time()


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """How many cores, on average, other processes on the machine kept busy in between."""
    wall = after[0] - before[0]
    return round(max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall, 2) if wall > 0 else 0.0
