"""Benchmark: VOC and COCO detection evaluation on a large synthetic validation set.

Compares, in one run on the same input:
  * visionsweep's vectorised VOC evaluator (fed in batches, as a validation loop does) against a plain
    per-image, per-class, per-prediction loop implementing the same rule (torchvision box_iou for the IoU);
  * visionsweep's COCO evaluator as installed by default (the faster-coco-eval backend) against the same
    evaluator with backend="pycocotools" (the fallback), and both against pycocotools and faster-coco-eval
    called directly (COCO, loadRes, COCOeval);
Every pair must agree on the numbers; the script stops otherwise.

Usage: python bench/detection_eval.py [--images 5000] [--classes 10] [--objects 8] [--predictions 25] [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from visionsweep.evaluation.coco import CocoEvaluator
from visionsweep.evaluation.voc import VocEvaluator, class_metrics


def synthetic_set(images: int, classes: int, objects: int, predictions: int, seed: int = 0):
    """Objects of varied size in 640x480 images; predictions jittered around them plus background false
    positives, with scores rounded to 0.01 so that ties occur as they do in real model output."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(images):
        m = int(rng.poisson(objects))
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (m, 2)))
        xy = rng.uniform(0, 1, (m, 2)) * (np.array([640, 480]) - wh)
        gt = np.hstack([xy, xy + wh])
        n = int(rng.poisson(predictions))
        source = rng.integers(0, max(m, 1), n)
        jitter = rng.normal(0, 0.08, (n, 4)) * np.tile(wh[source] if m else np.full((n, 2), 50.0), 2)
        boxes = (gt[source] if m else rng.uniform(0, 400, (n, 4))) + jitter
        background = rng.random(n) < 0.3
        boxes[background] = np.hstack([rng.uniform(0, 560, (background.sum(), 2)),
                                       rng.uniform(0, 560, (background.sum(), 2))])
        boxes = np.hstack([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 1])
        labels = rng.integers(0, classes, m)
        predicted = np.where(rng.random(n) < 0.85, labels[source] if m else 0, rng.integers(0, classes, n))
        truths.append({"boxes": gt, "labels": labels, "iscrowd": (rng.random(m) < 0.02).astype(np.int64)})
        preds.append({"boxes": boxes, "labels": predicted, "scores": np.round(rng.uniform(0.05, 1, n), 2)})
    return preds, truths


def voc_vectorised(preds, truths, classes, threshold, batch):
    evaluator = VocEvaluator([str(c) for c in range(classes)], iou_threshold=threshold)
    for start in range(0, len(preds), batch):
        evaluator.add(preds[start:start + batch], truths[start:start + batch])
    return evaluator.compute()["mean_average_precision"]


def voc_plain_loop(preds, truths, classes, threshold):
    """The same rule as a loop, the way it is usually written: per image, per class, per prediction."""
    per_class = [[] for _ in range(classes)]  # (score, sequence number, outcome)
    objects = np.zeros(classes, np.int64)
    sequence = 0
    for p, t in zip(preds, truths):
        crowd = t["iscrowd"].astype(bool)
        objects += np.bincount(t["labels"][~crowd], minlength=classes)
        for c in range(classes):
            p_idx = np.flatnonzero(p["labels"] == c)
            g_idx = np.flatnonzero(t["labels"] == c)
            if len(p_idx) == 0:
                continue
            if len(g_idx):
                pb = torch.from_numpy(p["boxes"][p_idx])
                gb = torch.from_numpy(t["boxes"][g_idx])
                iou = box_iou(pb, gb).numpy()
                # crowd objects: intersection over the prediction's area
                if crowd[g_idx].any():
                    lt = torch.max(pb[:, None, :2], gb[None, :, :2])
                    rb = torch.min(pb[:, None, 2:], gb[None, :, 2:])
                    inter = (rb - lt).clamp(min=0).prod(2).numpy()
                    area = ((pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1])).numpy()[:, None]
                    iou = np.where(crowd[g_idx][None, :], inter / area, iou)
            taken = set()
            order = sorted(range(len(p_idx)), key=lambda k: (-p["scores"][p_idx[k]], -k))
            for k in order:
                outcome = 0
                if len(g_idx):
                    best = int(np.argmax(iou[k]))
                    if iou[k, best] >= threshold:
                        if crowd[g_idx[best]]:
                            outcome = 2
                        elif best not in taken:
                            taken.add(best)
                            outcome = 1
                per_class[c].append((p["scores"][p_idx[k]], sequence + p_idx[k], outcome))
        sequence += len(p["scores"])
    aps = []
    for c in range(classes):
        ranked = sorted(per_class[c], key=lambda r: (-r[0], -r[1]))
        ap = class_metrics(np.array([r[2] for r in ranked], np.int8), int(objects[c]))["average_precision"]
        if ap != -1:
            aps.append(ap)
    return sum(aps) / (len(aps) + 1e-9)


def coco_ours(preds, truths, classes, batch, backend=None):
    evaluator = CocoEvaluator([str(c) for c in range(classes)], backend=backend)
    for start in range(0, len(preds), batch):
        evaluator.add(preds[start:start + batch], truths[start:start + batch])
    return np.array(list(evaluator.compute().values()))


def coco_documents(preds, truths, classes):
    """The input in pycocotools' own formats: a ground-truth dataset dict and a list of result dicts."""
    images, annotations, results = [], [], []
    for image_id, (p, t) in enumerate(zip(preds, truths), start=1):
        images.append({"id": image_id, "width": 640, "height": 480})
        for b, label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": crowd})
        for b, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": label + 1, "score": score,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)]}
    return dataset, results


def coco_direct(module_coco, module_eval, dataset, results):
    with contextlib.redirect_stdout(io.StringIO()):
        ground = module_coco()
        ground.dataset = dataset
        ground.createIndex()
        evaluation = module_eval(ground, ground.loadRes([dict(r) for r in results]), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.array(evaluation.stats[:12])


def timed(function, repeat):
    """(best CPU seconds of this process, best wall seconds, result). CPU time is the fairer measure on a
    shared machine: other processes stretch wall time but not the CPU time this one uses."""
    best_cpu = best_wall = float("inf")
    value = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return (best_cpu, best_wall), value


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--objects", type=float, default=8, help="mean objects per image")
    parser.add_argument("--predictions", type=float, default=25, help="mean predictions per image")
    parser.add_argument("--batch", type=int, default=16, help="images per add() call, as a validation loader")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the best time is reported")
    args = parser.parse_args()
    preds, truths = synthetic_set(args.images, args.classes, int(args.objects), int(args.predictions))
    n_gt = sum(len(t["labels"]) for t in truths)
    n_pred = sum(len(p["labels"]) for p in preds)
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    print(f"set: {args.images} images, {args.classes} classes, {n_gt} objects, {n_pred} predictions")

    rows = []
    t_voc, map_voc = timed(lambda: voc_vectorised(preds, truths, args.classes, args.iou, args.batch), args.repeat)
    rows.append(("VOC, visionsweep VocEvaluator (vectorised)", t_voc, f"mAP {map_voc:.6f}"))
    t_loop, map_loop = timed(lambda: voc_plain_loop(preds, truths, args.classes, args.iou), max(1, args.repeat - 2))
    rows.append(("VOC, plain loop (torchvision box_iou)", t_loop, f"mAP {map_loop:.6f}"))
    if abs(map_voc - map_loop) > 1e-12:
        raise SystemExit(f"VOC results differ: {map_voc} vs {map_loop}")

    t_default, stats_default = timed(lambda: coco_ours(preds, truths, args.classes, args.batch), args.repeat)
    default_backend = CocoEvaluator(["0"]).backend
    rows.append((f"COCO, visionsweep CocoEvaluator, default ({default_backend})", t_default,
                 f"AP {stats_default[0]:.6f}"))
    t_ours, stats_ours = timed(lambda: coco_ours(preds, truths, args.classes, args.batch, "pycocotools"), args.repeat)
    rows.append(("COCO, visionsweep CocoEvaluator, backend='pycocotools'", t_ours, f"AP {stats_ours[0]:.6f}"))
    dataset, results = coco_documents(preds, truths, args.classes)
    t_direct, stats_direct = timed(lambda: coco_direct(COCO, COCOeval, dataset, results), args.repeat)
    rows.append(("COCO, pycocotools directly (from ready dicts)", t_direct, f"AP {stats_direct[0]:.6f}"))
    for stats in (stats_ours, stats_default):
        if not np.allclose(stats, stats_direct, atol=1e-12, rtol=0):
            raise SystemExit(f"COCO results differ from pycocotools:\n{stats}\n{stats_direct}")
    t_fast = None
    try:
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        print("faster-coco-eval cannot be imported: its direct run is skipped")
    else:
        t_fast, stats_fast = timed(lambda: coco_direct(FastCOCO, COCOeval_faster, dataset, results), args.repeat)
        rows.append(("COCO, faster-coco-eval directly (from ready dicts)", t_fast, f"AP {stats_fast[0]:.6f}"))
        if not np.allclose(stats_fast, stats_direct, atol=1e-12, rtol=0):
            raise SystemExit(f"faster-coco-eval differs from pycocotools:\n{stats_fast}\n{stats_direct}")

    print(f"\n| method | CPU seconds | wall seconds | result |\n|---|---|---|---|")
    for name, (cpu, wall), result in rows:
        print(f"| {name} | {cpu:.3f} | {wall:.3f} | {result} |")
    ratio = lambda a, b: f"{a[0] / b[0]:.2f}x CPU, {a[1] / b[1]:.2f}x wall"  # noqa: E731
    print(f"\nplain VOC loop / vectorised VOC: {ratio(t_loop, t_voc)}")
    print(f"visionsweep COCO, backend='pycocotools' / default ({default_backend}): {ratio(t_ours, t_default)}")
    print(f"visionsweep COCO, backend='pycocotools' / pycocotools directly: {ratio(t_ours, t_direct)}")
    print(f"pycocotools directly / vectorised VOC: {ratio(t_direct, t_voc)}")
    print(f"visionsweep COCO, default / vectorised VOC: {ratio(t_default, t_voc)}")
    if t_fast is not None:
        print(f"pycocotools directly / faster-coco-eval directly: {ratio(t_direct, t_fast)}")
    print(f"vectorised VOC per 1000 images: {1000 * t_voc[0] / args.images * 1000:.1f} ms CPU")


if __name__ == "__main__":
    main()
