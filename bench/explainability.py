"""Benchmark: seconds per image of each explanation method on the CPU (visionsweep.explaining).

For ResNet-18 and ViT-S/16 (``vits16r224``), built with ``visionsweep.models.create_model(name, 3,
pretrained=False)`` (fresh weights cost what trained ones do), in eval mode, at a 224 x 224 input:

  * each method with the default ``ExplanationOptions`` (``n_steps`` 50, ``riemann_middle``, ``xrai_fast``),
    explaining the argmax class, ``visualizations`` off (the figure is timed apart). Guided Grad-CAM runs
    on ResNet-18's ``model.layer4[-1]``; ViT has no such layer (visionsweep refuses guided_gradcam for it,
    as the reference does), so that row is not run;
  * for ResNet-18, integrated gradients and XRAI at ``n_steps`` 10 and 25 too, and XRAI with
    ``xrai_fast: false`` (the full algorithm) at 50 steps;
  * the 2 x 2 figure of one explanation (ResNet-18's guided backprop) at visionsweep's default size
    (6 inches) and the reference's (12 inches): seconds and PNG kilobytes (and, for comparison only,
    what a 256-colour palette PNG of the same figure would weigh).

The image is one real photo (the first of the fridge classification set's ``img/`` folder, resized to 256
and centre-cropped to 224, normalised with the ImageNet mean and std) or, without the shared datasets,
seeded noise. ``--images`` repeats each configuration that many times on the same image (default 1;
explaining is deterministic in cost). Each model and method is warmed up first with one call at
``n_steps`` 2 (captum's and saliency's imports, oneDNN's first-call work). Per configuration: wall
seconds per image (the median over the repeats), this process's CPU seconds per image, the model calls
per image (forward + backward, batch 5: integrated gradients ``5 * n_steps`` images, XRAI ``2 * n_steps``,
guided backprop 5, guided Grad-CAM 1) and ``others_cores``: how many cores other processes kept busy
meanwhile (/proc/stat less this process's CPU time).

Results go to stdout as JSON (with ``--out``, to that file too); a line per row to stderr as it ends.

Usage:
  python bench/explainability.py [--threads 1] [--images 1] [--models resnet18 vits16r224]
                                 [--algorithms xrai ...] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from visionsweep.explaining import ExplanationOptions
from visionsweep.explaining.attributions import explain_image
from visionsweep.explaining.figure import denormalize, explanation_figure
from visionsweep.models import create_model
from machine_load import machine_busy, others_cores  # bench/, beside this script

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 224
IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fridgeObjects_cls" / "img"
GRADCAM_LAYERS = {"resnet18": lambda model: model.layer4[-1], "vits16r224": lambda model: None}
ALGORITHMS = ("xrai", "integrated_gradients", "guided_backprop", "guided_gradcam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the VM's 2 cores are shared)")
    parser.add_argument("--images", type=int, default=1, help="timed calls per configuration")
    parser.add_argument("--models", nargs="+", default=list(GRADCAM_LAYERS), choices=list(GRADCAM_LAYERS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS),
                        help="time only these methods (their n_steps and xrai_fast rows too)")
    parser.add_argument("--quick", action="store_true", help="smoke run: n_steps 4 everywhere, no sweeps")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    image, source = load_image()
    result: dict[str, Any] = {"machine": machine(), "command": "python " + " ".join(sys.argv), "threads": args.threads,
                              "image": source, "load_average_start": os.getloadavg(), "rows": [], "figures": []}
    for name in args.models:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(name, 3, pretrained=False).eval()
        layer = GRADCAM_LAYERS[name](model)
        with torch.no_grad():
            target = int(model(image[None]).argmax(1))
        default = ExplanationOptions(visualizations=False, n_steps=4 if args.quick else 50)
        configurations = [replace(default, algorithm=algorithm) for algorithm in args.algorithms]
        if name == "resnet18" and not args.quick:
            configurations += [replace(default, algorithm=algorithm, n_steps=steps)
                               for algorithm in ("integrated_gradients", "xrai") for steps in (10, 25)
                               if algorithm in args.algorithms]
            if "xrai" in args.algorithms:
                configurations.append(replace(default, algorithm="xrai", xrai_fast=False))
        warmed: set[str] = set()
        for options in configurations:
            if options.algorithm == "guided_gradcam" and layer is None:
                row = {"model": name, "algorithm": options.algorithm, "supported": False}
                result["rows"].append(row)
                print(json.dumps(row), file=sys.stderr)
                continue
            if options.algorithm not in warmed:
                explain_image(model, image, [target], replace(options, n_steps=2), titles=["warm-up"], mean=MEAN,
                              std=STD, gradcam_layer=layer, seed=0)
                warmed.add(options.algorithm)
            row = time_configuration(name, model, image, target, options, layer, args.images)
            result["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
        if name == "resnet18" and "guided_backprop" in args.algorithms:
            result["figures"] = time_figures(model, image, target, layer)
    result["load_average_end"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def time_configuration(name: str, model: torch.nn.Module, image: torch.Tensor, target: int,
                       options: ExplanationOptions, layer: torch.nn.Module | None, repeats: int) -> dict[str, Any]:
    walls, cpus = [], []
    before = machine_busy()
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        explain_image(model, image, [target], options, titles=["x"], mean=MEAN, std=STD, gradcam_layer=layer, seed=0)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    calls = {"integrated_gradients": 5 * options.n_steps, "xrai": 2 * options.n_steps, "guided_backprop": 5,
             "guided_gradcam": 1}[options.algorithm]
    tunable = options.algorithm in ("integrated_gradients", "xrai")
    return {"model": name, "algorithm": options.algorithm, "supported": True,
            "n_steps": options.n_steps if tunable else None,
            "xrai_fast": options.xrai_fast if options.algorithm == "xrai" else None,
            "images_per_explanation": calls, "repeats": repeats,
            "seconds_per_image": round(statistics.median(walls), 2),
            "cpu_seconds_per_image": round(statistics.median(cpus), 2),
            "others_cores": others_cores(before, machine_busy())}


def time_figures(model: torch.nn.Module, image: torch.Tensor, target: int,
                 layer: torch.nn.Module | None) -> list[dict[str, Any]]:
    (explanation,) = explain_image(model, image, [target], ExplanationOptions(algorithm="guided_backprop",
                                                                              visualizations=False),
                                   titles=["x"], mean=MEAN, std=STD, gradcam_layer=layer, seed=0)
    pixels = denormalize(image.numpy(), MEAN, STD)
    rows = []
    for inches in (6.0, 12.0):
        explanation_figure(pixels, explanation.attributions, "warm-up", inches=inches)
        wall = time.perf_counter()
        png = explanation_figure(pixels, explanation.attributions, "can (0.9731)", inches=inches)
        seconds = time.perf_counter() - wall
        with Image.open(io.BytesIO(png)) as figure:
            size = figure.size
            palette = io.BytesIO()  # not what visionsweep sends: how much a 256-colour PNG would save
            figure.quantize(256, method=Image.Quantize.FASTOCTREE).save(palette, format="PNG", optimize=True)
        rows.append({"inches": inches, "dpi": 100, "pixels": size, "png_kb": round(len(png) / 1024, 1),
                     "base64_kb": round(len(png) * 4 / 3 / 1024, 1), "seconds": round(seconds, 3),
                     "png_kb_if_256_colours": round(len(palette.getvalue()) / 1024, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def load_image() -> tuple[torch.Tensor, str]:
    """(3, 224, 224) normalised: a fridge photo, or seeded noise without the shared datasets."""
    photos = sorted(IMAGES.glob("*.jpg")) if IMAGES.is_dir() else []
    if photos:
        with Image.open(photos[0]) as photo:
            tensor = TF.to_tensor(TF.center_crop(TF.resize(photo.convert("RGB"), 256), CROP))
        source = f"{photos[0].parent.parent.name}/img/{photos[0].name}, resized to 256, centre crop {CROP}"
    else:
        tensor = torch.rand(3, CROP, CROP, generator=torch.Generator().manual_seed(0))
        source = f"seeded uniform noise, {CROP} x {CROP}"
    return TF.normalize(tensor, MEAN, STD), source


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    from importlib.metadata import version

    import captum

    return {"cpu": fields.get("model name") or platform.processor() or platform.machine(),
            "cpu_family_model": f"{fields.get('cpu family')}/{fields.get('model')}", "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "captum": captum.__version__, "saliency": version("saliency"), "numpy": np.__version__}


if __name__ == "__main__":
    main()
