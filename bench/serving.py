"""Benchmark: the scoring server (``visionsweep serve``) on loopback, one request at a time against
dynamic batching.

For each model (ResNet-18 classifier at its default 256 resize / 224 crop, YOLOv5 small at ``img_size``
320), built with fresh weights (they do not change the cost) in a model folder with its ``model.onnx``:

  * for each runtime (``torch``, ``onnxruntime``) and each batching mode (``off``: ``--max-batch-size 1``;
    ``on``: ``--max-batch-size 8 --max-wait-ms 10``, the defaults), a server process is started on a free
    loopback port with ``--log-level warning`` (no line per request), and warmed up;
  * for each ``--clients`` count (1, 8, 32), that many client threads, each on its own keep-alive
    connection, send JPEG photos (raw bytes, ``Content-Type: image/jpeg``) one after the other for
    ``--seconds`` (at most ``--max-requests`` each); requests per second is the answered requests over the
    wall time, latency is each request's round trip, and ``images per forward`` the mean of the
    ``X-Batch-Size`` headers.

With ``--profile``, each model's time per image is also split, in this process (at the server's torch
thread count), into its stages at batch 1 and at batch 8: ``frame`` (decoding the JPEG, resizing and
normalising it: the prediction loader without the network), ``forward`` (the network alone, on the framed
tensor), ``score`` (``serving.Scorer.score``, everything the server's forward thread does); what a request
takes beyond ``score`` is HTTP, the event loop and the client.

Images: the fridge photos of the shared datasets (499 x 666 JPEG) when present, else synthetic 640 x 480
JPEGs. The clients share the machine with the server: on a 2-core machine they take CPU from it.

Results go to stdout as JSON (with ``--out``, to that file too); a line per row to stderr as it ends.

Usage:
  python bench/serving.py [--quick] [--seconds 5] [--clients 1 8 32] [--models resnet18 yolov5]
                          [--runtimes torch onnxruntime] [--threads N] [--profile] [--out FILE]
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnxruntime
import torch
from PIL import Image

import visionsweep
from visionsweep.checkpoint import save_checkpoint
from visionsweep.models import create_model
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task

DATASETS = Path(os.environ.get("VISIONSWEEP_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
PHOTOS = DATASETS / "odFridgeObjects_FairMOTformat" / "images"
LABELS = ["can", "carton", "milk_bottle", "water_bottle"]
MODELS = {
    "resnet18": (Task.CLASSIFICATION, {"model_name": "resnet18"}),
    "yolov5": (Task.OBJECT_DETECTION, {"model_name": "yolov5", "model_size": "small", "img_size": 320}),
}
BATCHING = {"off": ["--max-batch-size", "1"], "on": ["--max-batch-size", "8", "--max-wait-ms", "10"]}
READY_TIMEOUT = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per row, torch only: a check that it runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of requests per row (default 5)")
    parser.add_argument("--max-requests", type=int, default=2000, help="most requests per client and row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per row")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, help="torch threads in the server (OMP_NUM_THREADS; default torch's)")
    parser.add_argument("--profile", action="store_true", help="also split each model's time per image into stages")
    parser.add_argument("--out", type=Path, help="also write the JSON results here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runtimes = 2.0, ["torch"]

    started = time.monotonic()
    photos = _photos()
    results: dict[str, Any] = {"machine": _machine(), "command": " ".join(sys.argv), "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        for name in args.models:
            model_dir = _model_folder(Path(folder) / name, name)
            if args.profile:
                results.setdefault("profile", {})[name] = _profile(model_dir, photos, args.threads)
                print(json.dumps({name: results["profile"][name]}), file=sys.stderr, flush=True)
            for runtime in args.runtimes:
                for batching, options in BATCHING.items():
                    with _server(model_dir, runtime, options, args.threads, Path(folder) / "server.log") as url:
                        _warm_up(url, photos)
                        for clients in args.clients:
                            row = {"model": name, "runtime": runtime, "batching": batching, "clients": clients,
                                   **_measure(url, photos, clients, args.seconds, args.max_requests)}
                            results["rows"].append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
    results["machine"]["load_average_after"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _model_folder(folder: Path, name: str) -> Path:
    """A model folder with a freshly initialised network and its ONNX export."""
    task, values = MODELS[name]
    settings = resolve_settings(task, {**values, "pretrained": False, "num_workers": 0})
    options = {key: value for key, value in values.items() if key != "model_name"}
    model = create_model(settings.model_name, len(LABELS), task=task, pretrained=False, **options)
    save_checkpoint(folder / "model.pt", model=model, task=task.value, model_name=settings.model_name, labels=LABELS,
                    settings=settings.to_dict(), epoch=0, score=None, metrics={})
    visionsweep.export(folder)
    return folder


def _photos() -> list[bytes]:
    if PHOTOS.is_dir():
        return [path.read_bytes() for path in sorted(PHOTOS.glob("*.jpg"))[:16]]
    rng = np.random.default_rng(0)
    photos = []
    for _ in range(16):
        gradient = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
        pixels = np.broadcast_to(gradient, (480, 640, 3)).astype(np.uint8).copy()
        pixels[100:300, 200:400] = rng.integers(0, 255, 3)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        photos.append(out.getvalue())
    return photos


@contextmanager
def _server(model_dir: Path, runtime: str, options: list[str], threads: int | None, log: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "visionsweep.cli", "serve", str(model_dir), "--port", str(port), "--runtime",
               runtime, "--log-level", "warning", *options]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not get ready:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/ready", timeout=5):
                    break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _warm_up(url: str, photos: list[bytes]) -> None:
    """A few requests alone and a round of concurrent ones: first calls allocate and pick kernels."""
    _measure(url, photos, 1, 1.0, 5)
    _measure(url, photos, 8, 0.0, 2)


def _measure(url: str, photos: list[bytes], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + seconds

    def client(index: int) -> list[tuple[float, int, int]]:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        done: list[tuple[float, int, int]] = []
        while len(done) < max_requests and (not done or time.monotonic() < deadline):
            body = photos[(index + len(done) * clients) % len(photos)]
            sent = time.perf_counter()
            connection.request("POST", "/score", body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            done.append((time.perf_counter() - sent, response.status, int(response.getheader("X-Batch-Size", "0"))))
        connection.close()
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        requests = [item for done in pool.map(client, range(clients)) for item in done]
    wall = time.perf_counter() - started
    latencies = sorted(latency for latency, status, _ in requests if status == 200)
    return {"requests": len(requests), "failed": sum(status != 200 for _, status, _ in requests),
            "requests_per_second": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * _percentile(latencies, 50), 1),
            "p99_ms": round(1000 * _percentile(latencies, 99), 1),
            "images_per_forward": round(statistics.mean(size for *_, size in requests), 2)}


def _profile(model_dir: Path, photos: list[bytes], threads: int | None) -> dict[str, Any]:
    """Milliseconds per image of each stage at batch 1 and 8, the median of five runs, torch runtime."""
    from visionsweep.api import load_model
    from visionsweep.data.jsonl import check_images
    from visionsweep.data.records import ImageRecord
    from visionsweep.data.report import DataReport
    from visionsweep.inference.predictor import Predictor
    from visionsweep.serving.scoring import Scorer

    if threads:
        torch.set_num_threads(threads)
    stages: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    trained = load_model(model_dir)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{i}.jpg" for i in range(8)]
        for path, photo in zip(paths, photos):
            path.write_bytes(photo)
        for batch in (1, 8):
            scorer = Scorer(trained, batch_size=batch)
            report = DataReport(source="bench")
            records = check_images([ImageRecord(image_path=path, image_url=path.name, location=path.name)
                                    for path in paths[:batch]], report)
            predictor = Predictor(scorer.trained, records, report)
            images = next(iter(predictor.family.prediction_loader(records))).images
            network_input = images.float() / 255 if images.dtype == torch.uint8 else images  # YOLOv5's 0-255

            def frame() -> None:
                list(predictor.family.prediction_loader(records))

            def forward() -> None:
                with torch.no_grad():
                    predictor.model(network_input)

            for stage, run in (("frame", frame), ("forward", forward),
                               ("score", lambda: scorer.score(photos[:batch]))):
                run()
                times = []
                for _ in range(5):
                    started = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - started)
                stages[f"{stage}_ms_per_image_at_batch_{batch}"] = round(1000 * statistics.median(times) / batch, 1)
    return stages


def _percentile(values: list[float], percent: float) -> float:
    return float(np.percentile(values, percent)) if values else float("nan")


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "load_average_before": os.getloadavg()}


if __name__ == "__main__":
    main()
