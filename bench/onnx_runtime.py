"""Benchmark: inference throughput on the CPU, eager PyTorch against ONNX Runtime, in the same run.

For each model (ResNet-18 classifier at a 224 crop, YOLOv5 small at ``img_size`` 320 and 640, Faster
R-CNN ResNet-18 FPN at ``min_size`` = ``max_size`` = 320), built with fresh weights (they do not change
the cost, except for the R-CNN's detection count, which is recorded):

  * the model is exported with ``visionsweep.exporting.onnx_file.export_onnx`` (default ``ExportOptions``:
    any batch size, opset 17, no NMS in the YOLOv5 graph); its seconds and file size are recorded;
  * contenders, called on the same input at batch 1 and batch 8, at each ``--threads`` count:
      - ``eager``: ``family.inference_model(model)`` under ``torch.inference_mode`` (what visionsweep's torch
        prediction runs; YOLOv5 with BatchNorm folded), after ``torch.set_num_threads(threads)``;
      - ``ort``: ``family.onnx_model(OnnxSession(path))``, the stand-in visionsweep's ONNX prediction runs,
        its InferenceSession replaced by one with ``intra_op_num_threads = threads`` (``inter_op`` 1,
        sequential), so both sides get the same threads;
      - ``ort_default``: the same stand-in with the session ``OnnxSession`` makes (ONNX Runtime's default
        options: one thread per physical core), at the thread counts where that differs;
      - R-CNN only, ``ort_loop``: the graph's own loop over the batch, ``session.run`` on the (B, 3, H, W)
        array at once (the stand-in, like the reference's runtime, runs a batch's images one at a time).
    Inputs: classifier (B, 3, 224, 224) normalised floats; YOLOv5 (B, 3, S, S) in 0..1; R-CNN a list of B
    (3, 320, 320) normalised images. Only the model call is timed (no image loading or resizing; no NMS
    for YOLOv5, which is outside its graph on both sides; the R-CNN's is inside on both).
  * Timing: ``--warmup`` calls each, then rounds in which the contenders take turns (so a busy spell on
    this shared machine hits them all), at least ``--min-repeats`` rounds and more while the row's
    ``--budget`` seconds last; the median seconds per call is kept. Each call starts 0.1 s after the
    last one ended, when the previous contender's threads have stopped spinning. ``others_cores``: how
    many cores other processes kept busy meanwhile (/proc/stat less this process's CPU time).
  * Where ``ort`` is below ``--target`` times eager (1.5), both sides are profiled (torch.profiler self
    CPU time per operator; ONNX Runtime's ``enable_profiling`` node kernel times) and the per-operator
    time shares are recorded.

Results go to stdout as JSON (with ``--out``, to that file too); a line per row to stderr as it ends.

Usage:
  python bench/onnx_runtime.py [--quick] [--threads 1 2] [--budget 5] [--models resnet18 ...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision

from visionsweep.exporting.graph import ExportOptions
from visionsweep.exporting.onnx_file import export_onnx
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.families.selection import family_for
from visionsweep.models import build_model, get_model_spec
from visionsweep.settings import resolve_settings
from machine_load import machine_busy, others_cores  # bench/, beside this script

CPU = torch.device("cpu")
LABELS = ["a", "b", "c"]
BATCHES = (1, 8)
QUICK_BATCHES = (1, 2)
# Seconds to wait before each timed call: ONNX Runtime's pool threads spin for about 40 ms after a run
# (torch's OpenMP ones for about 8), which would take a core from the next contender's call.
SETTLE = 0.1


@dataclass(frozen=True)
class Case:
    name: str
    task: str
    settings: dict[str, Any]
    shape: tuple[int, int]  # H, W of one input image

    def inputs(self, batch: int) -> Any:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, *self.shape, generator=generator)
        if self.task == "image_classification":  # normalised as the classifier's loader gives them
            return (images - 0.45) / 0.225
        if self.name.startswith("yolov5"):
            return images  # letterboxed RGB in 0..1
        return list((images - 0.45) / 0.225)  # R-CNN: a list of normalised (3, H, W) images


CASES = [
    Case("resnet18", "image_classification", {"model_name": "resnet18"}, (224, 224)),
    Case("yolov5s-320", "image_object_detection", {"model_name": "yolov5", "model_size": "small", "img_size": 320},
         (320, 320)),
    Case("yolov5s-640", "image_object_detection", {"model_name": "yolov5", "model_size": "small", "img_size": 640},
         (640, 640)),
    Case("fasterrcnn_resnet18_fpn-320", "image_object_detection",
         {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 320, "max_size": 320}, (320, 320)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer models and repeats, no profiling")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="thread counts to run at, torch and ONNX Runtime alike (default: 1 and every core)")
    parser.add_argument("--budget", type=float, default=5.0,
                        help="seconds of timing per model, batch size and thread count")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--target", type=float, default=1.5, help="profile where ort / eager is below this")
    parser.add_argument("--models", nargs="+", help=f"a subset of {[c.name for c in CASES]}")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.min_repeats, args.warmup, args.no_profile = 0.0, 1, 0, True
        args.models = args.models or ["resnet18", "yolov5s-320", "fasterrcnn_resnet18_fpn-320"]
        args.threads = args.threads[:1]
    args.batches = QUICK_BATCHES if args.quick else BATCHES
    torch.manual_seed(0)
    cases = [c for c in CASES if not args.models or c.name in args.models]
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "command": "python " + " ".join(sys.argv),
                              "load_average_start": os.getloadavg(), "exports": {}, "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            bench_case(case, Path(folder), args, result)
    result["load_average_end"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name") or platform.processor() or platform.machine(),
            "cpu_family_model": f"{fields.get('cpu family')}/{fields.get('model')}",
            "isa": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}),
            "cpus": os.cpu_count(), "physical_cores": physical_cores(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


# --- one model ---------------------------------------------------------------------------------------------


def bench_case(case: Case, folder: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    torch.set_num_threads(max(args.threads))
    settings = resolve_settings(case.task, {**case.settings, "pretrained": False})
    model = build_model(get_model_spec(settings.model_name), len(LABELS), settings.model_dump(), pretrained=False,
                        pretrained_weights=None, layers_to_freeze=None).eval()
    family = family_for(settings, LABELS, CPU, lambda failures, stage: None)
    eager = family.inference_model(model).eval()
    exported = export_onnx(model, settings, LABELS, folder / f"{case.name}.onnx", ExportOptions())
    result["exports"][case.name] = {"seconds": round(exported.seconds, 2),
                                    "file_mb": round(exported.size_bytes / 1e6, 1)}
    print(json.dumps({"model": case.name, **result["exports"][case.name]}), file=sys.stderr, flush=True)
    default = OnnxSession(exported.path)
    # ONNX Runtime's own default options (one thread per physical core); OnnxSession itself takes torch's
    # thread count, which is the "ort" contender below.
    default.session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    ort_default = family.onnx_model(default)
    for batch in args.batches:
        images = case.inputs(batch)
        stacked = np.ascontiguousarray(torch.stack(images).numpy()) if isinstance(images, list) else None
        for threads in args.threads:
            torch.set_num_threads(threads)
            fixed = OnnxSession(exported.path)
            fixed.session = onnxruntime.InferenceSession(str(exported.path), sess_options=session_options(threads),
                                                         providers=["CPUExecutionProvider"])
            ort = family.onnx_model(fixed)
            contenders: dict[str, Callable[[], Any]] = {"eager": lambda: eager(images), "ort": lambda: ort(images)}
            # ONNX Runtime's default is one thread per physical core; for the R-CNN a batch is that many
            # calls of batch 1 (the stand-in's loop), so its default-options figure is batch 1's.
            if threads != physical_cores() and (stacked is None or batch == 1):
                contenders["ort_default"] = lambda: ort_default(images)
            if stacked is not None:  # R-CNN: the graph's own loop over a batch of same-sized images
                contenders["ort_loop"] = lambda: fixed.session.run(None, {fixed.metadata.input_name: stacked})
            with torch.inference_mode():
                check = agreement(contenders["eager"](), contenders["ort"]())
                before = machine_busy()
                times = time_contenders(contenders, args)
                others = others_cores(before, machine_busy())
            entry = {"model": case.name, "batch": batch, "threads": threads, "check": check,
                     "others_cores": others, **summarise(times, batch)}
            for name in contenders:
                if name != "eager":
                    entry[f"ratio_{name}_eager"] = round(entry[name]["images_per_s"]
                                                         / entry["eager"]["images_per_s"], 3)
                    entry[f"cpu_ratio_{name}_eager"] = round(entry[name]["images_per_cpu_s"]
                                                             / entry["eager"]["images_per_cpu_s"], 3)
            if entry["ratio_ort_eager"] < args.target and not args.no_profile:
                with torch.inference_mode():
                    entry["profile"] = profile(contenders["eager"], exported.path, fixed, images, threads,
                                               runs=3 if batch == 1 else 1)
            result["rows"].append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "profile"}), file=sys.stderr, flush=True)


def physical_cores() -> int:
    """Distinct (socket, core) pairs in /proc/cpuinfo: what ONNX Runtime's default thread count follows."""
    pairs, socket = set(), None
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                socket = value.strip()
            elif key.strip() == "core id":
                pairs.add((socket, value.strip()))
    return len(pairs) or os.cpu_count() or 1


def session_options(threads: int, profile_prefix: str | None = None) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def agreement(eager_out: Any, ort_out: Any) -> dict[str, Any]:
    """How close the two outputs are: the largest absolute difference of the logits (classifier) or
    decoded boxes (YOLOv5), the detection counts for the R-CNN (fresh weights: a handful or none)."""
    if isinstance(eager_out, tuple):  # YOLOv5: (decoded, raw)
        eager_out, ort_out = eager_out[0], ort_out[0]
    if isinstance(eager_out, torch.Tensor):
        return {"max_abs_diff": float((eager_out - ort_out).abs().max()),
                "max_abs": float(eager_out.abs().max())}
    return {"eager_detections": [len(d["boxes"]) for d in eager_out],
            "ort_detections": [len(d["boxes"]) for d in ort_out]}


def time_contenders(contenders: dict[str, Callable[[], Any]],
                    args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds of each call of each contender."""
    for call in contenders.values():
        for _ in range(args.warmup):
            call()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    started = time.perf_counter()
    rounds = 0
    while rounds < args.min_repeats or (time.perf_counter() - started < args.budget and rounds < 100):
        for name, call in contenders.items():  # the contenders take turns
            time.sleep(SETTLE)
            tick, cpu = time.perf_counter(), time.process_time()
            call()
            times[name].append((time.perf_counter() - tick, time.process_time() - cpu))
        rounds += 1
    return times


def summarise(times: dict[str, list[tuple[float, float]]], batch: int) -> dict[str, Any]:
    """Median images per second and per CPU second (at one thread the CPU time is the work alone,
    whatever else the machine runs; at more, it also counts threads spinning while they wait)."""
    out = {}
    for name, found in times.items():
        walls = [wall for wall, _ in found]
        median, cpu = statistics.median(walls), statistics.median(c for _, c in found)
        out[name] = {"images_per_s": round(batch / median, 2), "images_per_cpu_s": round(batch / cpu, 2),
                     "ms_per_call": round(median * 1e3, 1), "ms_min": round(min(walls) * 1e3, 1),
                     "ms_max": round(max(walls) * 1e3, 1), "cpu_ms_per_call": round(cpu * 1e3, 1),
                     "repeats": len(found)}
    return out


# --- profiling -----------------------------------------------------------------------------------------------


def profile(eager_call: Callable[[], Any], path: Path, fixed: OnnxSession, images: Any, threads: int,
            runs: int = 3) -> dict[str, Any]:
    """Per-operator time shares of eager (torch.profiler self CPU time, the model already warm) and
    ONNX Runtime (its node kernel times in a new session, after a warm-up run of one image), over
    ``runs`` calls, and each side's ms per call while profiled."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            eager_call()
    eager_ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}  # microseconds

    with tempfile.TemporaryDirectory() as folder:
        session = onnxruntime.InferenceSession(str(path), sess_options=session_options(threads, f"{folder}/ort"),
                                               providers=["CPUExecutionProvider"])
        arrays = ([np.ascontiguousarray(image[None].numpy()) for image in images] if isinstance(images, list)
                  else [np.ascontiguousarray(images.numpy())])
        feed = fixed.metadata.input_name
        session.run(None, {feed: arrays[0][:1]})
        events_before = 1
        for _ in range(runs):
            for array in arrays:
                session.run(None, {feed: array})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs_seen[events_before:]
    first = timed[0]["ts"] if timed else 0
    ort_ops: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < first:
            continue
        op = event.get("args", {}).get("op_name", "?")
        if op in ("Loop", "If", "Scan"):  # control flow: its body's nodes are counted themselves
            continue
        ort_ops[op] += event["dur"]
    return {"runs": runs,
            "eager_ms_per_call": round(sum(eager_ops.values()) / runs / 1e3, 1),
            "ort_ms_per_call": round(sum(e["dur"] for e in timed) / runs / 1e3, 1),
            "eager_ops": shares(eager_ops, runs), "ort_ops": shares(ort_ops, runs)}


def shares(ops: dict[str, float], runs: int, top: int = 12) -> list[dict[str, Any]]:
    total = sum(ops.values()) or 1.0
    ranked = sorted(ops.items(), key=lambda item: -item[1])
    listed = [{"op": op, "ms_per_call": round(us / runs / 1e3, 2), "share": round(us / total, 3)}
              for op, us in ranked[:top]]
    rest = sum(us for _, us in ranked[top:])
    if rest:
        listed.append({"op": "(rest)", "ms_per_call": round(rest / runs / 1e3, 2), "share": round(rest / total, 3)})
    return listed


if __name__ == "__main__":
    main()
