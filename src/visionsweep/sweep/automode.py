"""AutoMode: what to sweep when a job asks for max_trials > 1 and gives no search space.

Azure's AutoMode is undocumented beyond "it picks the architecture and values such as learning
rate, epochs and layers to freeze, scaled to the trial budget". This is visionsweep's policy;
``docs/sweeps.md`` carries the same text.

1. **Candidate models** depend on the task and the hardware (the smallest visible GPU's memory;
   CPU when there is no GPU), best first:

   ====================  =========================================  ===============================  =============================
   task                  GPU with >= 10 GiB                         GPU below 10 GiB                 CPU only
   ====================  =========================================  ===============================  =============================
   classification        vitb16r224, seresnext, resnet50,           vits16r224, resnet50,            mobilenetv2, resnet18,
   (both kinds)          vits16r224, resnest50                      seresnext, mobilenetv2           resnet34
   object detection      yolov5 (medium), fasterrcnn_resnet50_fpn,  yolov5 (small),                  yolov5 (small),
                         retinanet_resnet50_fpn                     fasterrcnn_resnet50_fpn          fasterrcnn_resnet18_fpn
   instance              maskrcnn_resnet50_fpn,                     maskrcnn_resnet50_fpn,           maskrcnn_resnet18_fpn,
   segmentation          maskrcnn_resnet101_fpn                     maskrcnn_resnet34_fpn            maskrcnn_resnet50_fpn
   ====================  =========================================  ===============================  =============================

   Why: the GPU lists follow the reference defaults and the architectures its docs recommend;
   on CPU, ViTs and ResNet-101/152 take hours per epoch, so the lists keep small networks that
   still transfer well. A ``model_name`` in ``training_parameters`` pins the model.

2. **How many models**: ``k = min(len(candidates), max_trials, max(2, ceil(max_trials / 4)))`` -
   about one family per four trials, at least two, so a 10-trial budget compares three families.

3. **Portfolio first**: slots 0 .. k-1 train the k models with their reference defaults
   (AutoGluon's lesson: measure the default configuration before searching around it).

4. **Then TPE** (``bayesian``, seed 0, startup trials = k + 2) over one sub-space per model:
   ``learning_rate`` log-uniform from a third of the model's default to three times it; with
   ``max_trials >= 20`` also ``number_of_epochs`` from ``choice(default, 1.5 * default)``, since a
   large budget can afford longer schedules. Keys fixed in ``training_parameters`` are never swept.

5. **Early termination**: ``median_stopping`` (evaluation_interval 1, delay_evaluation 5, the
   docs' conservative recommendation) when ``max_trials >= 8``, so that there are peers to compare
   with; none below.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from visionsweep.settings import canonical_key
from visionsweep.settings.defaults import task_model_defaults
from visionsweep.sweep.distributions import Distribution
from visionsweep.sweep.policies import PolicySpec
from visionsweep.sweep.sampling import SamplingSpec
from visionsweep.sweep.space import SUBSPACE_PARAM, SearchSpace, SubSpace
from visionsweep.tasks import Task

LARGE_GPU_GIB = 10.0
MEDIAN_STOPPING_FROM = 8
LONGER_EPOCHS_FROM = 20

# (model_name, extra fixed settings) per hardware tier, best first.
_CLASSIFIERS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "large_gpu": [("vitb16r224", {}), ("seresnext", {}), ("resnet50", {}), ("vits16r224", {}), ("resnest50", {})],
    "small_gpu": [("vits16r224", {}), ("resnet50", {}), ("seresnext", {}), ("mobilenetv2", {})],
    "cpu": [("mobilenetv2", {}), ("resnet18", {}), ("resnet34", {})],
}
_CANDIDATES: dict[Task, dict[str, list[tuple[str, dict[str, Any]]]]] = {
    Task.CLASSIFICATION: _CLASSIFIERS,
    Task.MULTILABEL: _CLASSIFIERS,
    Task.OBJECT_DETECTION: {
        "large_gpu": [("yolov5", {"model_size": "medium"}), ("fasterrcnn_resnet50_fpn", {}),
                      ("retinanet_resnet50_fpn", {})],
        "small_gpu": [("yolov5", {"model_size": "small"}), ("fasterrcnn_resnet50_fpn", {})],
        "cpu": [("yolov5", {"model_size": "small"}), ("fasterrcnn_resnet18_fpn", {})],
    },
    Task.INSTANCE_SEGMENTATION: {
        "large_gpu": [("maskrcnn_resnet50_fpn", {}), ("maskrcnn_resnet101_fpn", {})],
        "small_gpu": [("maskrcnn_resnet50_fpn", {}), ("maskrcnn_resnet34_fpn", {})],
        "cpu": [("maskrcnn_resnet18_fpn", {}), ("maskrcnn_resnet50_fpn", {})],
    },
}


@dataclass(frozen=True)
class Hardware:
    """What AutoMode plans for: visible GPUs, the smallest one's memory, and CPU cores."""

    gpus: int = 0
    gpu_memory_gib: float = 0.0
    cpus: int = 1

    @property
    def tier(self) -> str:
        if self.gpus == 0:
            return "cpu"
        return "large_gpu" if self.gpu_memory_gib >= LARGE_GPU_GIB else "small_gpu"

    @classmethod
    def detect(cls) -> "Hardware":
        """Ask torch for the visible CUDA devices (no GPU when torch or CUDA is unavailable)."""
        cpus = os.cpu_count() or 1
        try:
            import torch
        except ImportError:
            return cls(0, 0.0, cpus)
        if not torch.cuda.is_available():
            return cls(0, 0.0, cpus)
        count = torch.cuda.device_count()
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / 2**30
        return cls(count, float(memory), cpus)


@dataclass(frozen=True)
class AutoModePlan:
    """A search space, the presets that slots 0 .. len(portfolio)-1 take, sampling and policy."""

    space: SearchSpace
    portfolio: tuple[dict[str, Any], ...]
    sampling: SamplingSpec
    policy: PolicySpec | None
    reasons: tuple[str, ...]


def plan_automode(task: Task, max_trials: int, hardware: Hardware,
                  fixed: Mapping[str, Any] | None = None) -> AutoModePlan:
    """The AutoMode plan for ``task`` with ``max_trials`` trials on ``hardware`` (see the module
    docstring). ``fixed`` are the job's training_parameters: they are never swept, and a fixed
    ``model_name`` pins the model."""
    fixed = {canonical_key(k): v for k, v in (fixed or {}).items()}
    candidates = _CANDIDATES[task][hardware.tier]
    reasons = [f"hardware: {hardware.gpus} GPU(s), smallest {hardware.gpu_memory_gib:.0f} GiB, {hardware.cpus} CPU "
               f"core(s) -> {hardware.tier.replace('_', ' ')} model list"]
    if "model_name" in fixed:
        pinned = [c for c in candidates if c[0] == fixed["model_name"]] or [(fixed["model_name"], {})]
        candidates = pinned
        reasons.append(f"model_name {fixed['model_name']} is fixed in training_parameters")
    count = min(len(candidates), max_trials, max(2, math.ceil(max_trials / 4)))
    chosen = candidates[:count]
    reasons.append(f"{max_trials} trials -> {count} model(s): {', '.join(m for m, _ in chosen)}; "
                   f"their default configurations run first")

    subspaces = []
    portfolio = []
    conditional = len(chosen) > 1
    for index, (model, extra) in enumerate(chosen):
        given = {**extra, **fixed, "model_name": model}
        defaults = task_model_defaults(task, model, given)
        sub_fixed = {"model_name": model, **{k: v for k, v in extra.items() if k not in fixed}}
        dists: dict[str, Distribution] = {}
        point: dict[str, Any] = {SUBSPACE_PARAM: index} if conditional else {}
        name = (lambda key: f"{key}@{index}") if conditional else (lambda key: key)
        if "learning_rate" not in fixed:
            lr = float(defaults["learning_rate"])
            dists["learning_rate"] = Distribution("loguniform", {"min_value": math.log(lr / 3),
                                                                 "max_value": math.log(lr * 3)})
            point[name("learning_rate")] = lr
        if max_trials >= LONGER_EPOCHS_FROM and "number_of_epochs" not in fixed:
            epochs = int(defaults["number_of_epochs"])
            dists["number_of_epochs"] = Distribution("choice", {"values": (epochs, math.ceil(epochs * 1.5))})
            point[name("number_of_epochs")] = epochs
        subspaces.append(SubSpace(sub_fixed, dists))
        portfolio.append(point)
    swept = sorted({k for sub in subspaces for k in sub.distributions})
    if swept:
        reasons.append(f"then TPE over {', '.join(swept)} (learning_rate from default/3 to default*3)")
    elif len(subspaces) == 1:
        reasons.append("nothing is left to sweep (the model and learning_rate are fixed): every trial trains the "
                       "same configuration, which only measures run-to-run variation")
    policy = None
    if max_trials >= MEDIAN_STOPPING_FROM:
        policy = PolicySpec("median_stopping", evaluation_interval=1, delay_evaluation=5)
        reasons.append("median_stopping (interval 1, delay 5): enough trials to compare against")
    sampling = SamplingSpec("bayesian", seed=0, n_startup_trials=count + 2)
    return AutoModePlan(SearchSpace(tuple(subspaces)), tuple(portfolio), sampling, policy, tuple(reasons))
