"""Memory and time of building Mask R-CNN training targets for one large image with many objects.

Two ways, same image, same objects, same random augmentation (crop or expand, flip), same resize:

* full-resolution (the plain way, and the reference's): rasterise every polygon at the image's
  resolution, then crop/pad/flip the (N, H, W) masks with the image and resize them with nearest
  neighbour to the model frame;
* visionsweep: move the polygons with the boxes through the same steps and rasterise them once, in the
  model frame (``SegmentationDataset.prepare``).

Each (way, object count) runs in a fresh process; the peak resident memory during the steps above the
memory before them (image already decoded; the kernel's VmHWM, reset first) is reported, with the
median time per image and the IoU between the masks the two ways produce.

    python bench/segmentation_masks.py --width 4000 --height 3000 --objects 10 50 200
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _polygons(count: int, seed: int = 0) -> list[list[list[float]]]:
    """``count`` star-shaped normalised polygons of 16 points, sizes from 1% to 20% of the image side."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(count):
        radius = rng.uniform(0.01, 0.2)
        centre = rng.uniform(radius, 1 - radius, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 16))
        points = centre + np.column_stack([np.cos(angles), np.sin(angles)]) * radius * rng.uniform(0.5, 1, 16)[:, None]
        objects.append([np.clip(points, 0, 1).ravel().tolist()])
    return objects


def _record(polygons, width, height):
    from visionsweep.data.detection_labels import polygon_box
    from visionsweep.data.records import ImageRecord, ObjectAnnotation

    objects = tuple(ObjectAnnotation("thing", polygon_box(tuple(tuple(s) for s in p)),
                                     polygons=tuple(tuple(s) for s in p)) for p in polygons)
    return ImageRecord(image_path=None, image_url="synthetic", objects=objects, width=width, height=height)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _masks_file(way: str, objects: int) -> Path:
    return Path(tempfile.gettempdir()) / f"segmentation_masks_{way}_{objects}.pickle"


def _reset_peak() -> None:
    """Start the kernel's peak-RSS counter (VmHWM) afresh, so that imports and setup do not count."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def run_one(way: str, objects: int, width: int, height: int, repeats: int, min_size: int, max_size: int) -> dict:
    from visionsweep.geometry.masks import pixel_segments, polygons_to_masks
    from visionsweep.families.rcnn.dataset import SegmentationDataset, objects_target
    from visionsweep.families.rcnn.transforms import prepare_image

    torch.set_num_threads(1)
    image = torch.randint(0, 255, (3, height, width), dtype=torch.uint8)
    record = _record(_polygons(objects), width, height)
    dataset = SegmentationDataset([record], ["thing"], min_size=min_size, max_size=max_size, augment=True)
    times, outputs = [], []
    _reset_peak()
    before = _rss_bytes()
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        target = objects_target(record.objects, {"thing": 0}, width, height)
        start = time.perf_counter()
        if way == "full-resolution":
            objects_px = [pixel_segments(o.polygons, width, height) for o in record.objects]
            target["masks"] = torch.from_numpy(polygons_to_masks(objects_px, height, width))
            _, target = prepare_image(image, target, min_size=min_size, max_size=max_size, augment=True, rng=rng)
        else:
            dataset._generator = lambda rng=rng: rng  # the same draws as the other way
            _, target = dataset.prepare(image, target, record.objects)
        times.append(time.perf_counter() - start)
        outputs.append(target["masks"].numpy().astype(bool))
    peak = _peak_bytes()
    with open(_masks_file(way, objects), "wb") as handle:
        pickle.dump(outputs, handle)
    return {"way": way, "objects": objects, "peak_mb": (peak - before) / 2**20,
            "seconds_per_image": float(np.median(times)), "frame": list(outputs[0].shape[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--objects", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--one", nargs=2, metavar=("WAY", "OBJECTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.width, args.height, args.repeats,
                                 args.min_size, args.max_size)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads available, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"image {args.width}x{args.height}, frame min_size {args.min_size} max_size {args.max_size}, "
          f"{args.repeats} augmented samples each, medians\n")
    print("| objects | full-resolution peak MB | visionsweep peak MB | memory ratio | full-resolution s | "
          "visionsweep s | time ratio | mask IoU between the ways |")
    print("|---|---|---|---|---|---|---|---|")
    for objects in args.objects:
        results = {}
        for way in ("full-resolution", "visionsweep"):
            command = [sys.executable, __file__, "--one", way, str(objects), "--width", str(args.width), "--height",
                       str(args.height), "--repeats", str(args.repeats), "--min-size", str(args.min_size),
                       "--max-size", str(args.max_size)]
            results[way] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        full, ours = (pickle.loads(_masks_file(way, objects).read_bytes()) for way in ("full-resolution",
                                                                                        "visionsweep"))
        ious = [((a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)).mean() for a, b in zip(full, ours)]
        f, o = results["full-resolution"], results["visionsweep"]
        print(f"| {objects} | {f['peak_mb']:.0f} | {o['peak_mb']:.0f} | {f['peak_mb'] / max(o['peak_mb'], 1e-9):.1f} | "
              f"{f['seconds_per_image']:.2f} | {o['seconds_per_image']:.2f} | "
              f"{f['seconds_per_image'] / o['seconds_per_image']:.1f} | {np.mean(ious):.3f} |")


if __name__ == "__main__":
    main()
