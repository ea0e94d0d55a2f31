"""Attributions for one classified image: which pixels pushed the model towards a class.

``explain_image`` runs one of the reference's four methods (spec: classification §6.6) on one
preprocessed image, for each class the caller asks about, and returns one ``Explanation`` per class:

* ``integrated_gradients``: captum ``IntegratedGradients`` (``n_steps``, ``method=approximation_method``,
  internal batch 5, the all-zero baseline of the normalised input, i.e. the mean image) inside a captum
  ``NoiseTunnel`` doing SmoothGrad: 5 noisy copies of the input, noise standard deviation 0.2 (in the
  normalised frame), 5 copies per batch, their attributions averaged.
* ``guided_backprop``: captum ``GuidedBackprop`` (the gradient of the target logit with ReLU gradients
  clipped at zero on the way back) inside the same NoiseTunnel.
* ``guided_gradcam``: captum ``GuidedGradCam`` on ``gradcam_layer`` (Grad-CAM's coarse class map of
  that layer, upsampled to the input and multiplied by guided backprop). It needs a convolutional
  layer; without one it is a ValueError naming the method.
* ``xrai``: PAIR ``saliency``'s ``XRAI``: integrated gradients of the target class's probability
  (softmax for a multi-class model, sigmoid for a multi-label one) with respect to the image in [0, 1],
  from two flat baselines at the image's lowest and highest value (saliency's defaults), ``steps = n_steps``,
  5 steps per model call; then Felzenszwalb segments of the image ranked by attribution density
  (``xrai_fast``: saliency's fast algorithm). Its (H, W) map is repeated over the 3 channels.

The logits (captum's methods) and the probabilities (XRAI) are the reference's choices.

The model is put in eval mode and its ``nn.ReLU`` modules made non-inplace (captum's guided backprop
hooks them) for the call; both are restored afterwards. Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so no ``.grad`` is left on the parameters (any
that appear are cleared). Explanations of one model take turns (a lock per model). A plain prediction
on the same model object must not run during one: while guided backprop or guided Grad-CAM runs,
captum's hooks sit on the ReLUs and raise "cannot register a hook on a tensor that doesn't require
gradient" on a forward pass made under ``torch.no_grad`` or ``torch.inference_mode``.

``seed`` seeds the NoiseTunnel's noise under ``torch.random.fork_rng``, so the caller's generators are
left as they were; without it the noise comes from torch's global generator. (Forking is process-wide:
seeded explanations in several threads at once would see each other's seeds.) XRAI and guided Grad-CAM
draw nothing: they give the same result every time.

Where the reference differs (spec §6.6, quirks not reproduced):

* Its XRAI model call takes an image already in [0, 1], divides it by 255 again and only then
  normalises it, so the network sees an almost black image minus the ImageNet mean, and XRAI explains
  that instead of the picture. Here the [0, 1] image is normalised with ``mean``/``std`` once, so the
  network sees what it sees when it predicts.
* Its batch scoring script hands the integrated-gradients approximation method to the explainer under
  a keyword the explainer does not read, so ``approximation_method`` given on the command line is
  ignored there (``riemann_middle`` is always used). Here ``options.approximation_method`` is what
  captum gets, on every path.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from visionsweep.explaining.options import APPROXIMATION_METHODS, MAX_STEPS, XAI_ALGORITHMS, ExplanationOptions

# The reference's SmoothGrad noise tunnel around integrated gradients and guided backprop.
NOISE_SAMPLES = 5
NOISE_STDEV = 0.2
NOISE_BATCH = 5
# Inputs per model call: integrated gradients' internal batch, and XRAI's steps per call.
STEPS_BATCH = 5


@dataclass(frozen=True)
class Explanation:
    """The explanation of one class for one image."""

    class_index: int
    attributions: np.ndarray  # (3, H, W) float32, in the frame the model saw (the centre crop)
    figure_png: bytes | None  # the 2 x 2 figure (options.visualizations), else None


def explain_image(model: nn.Module, image: torch.Tensor, classes: Sequence[int], options: ExplanationOptions, *,
                  titles: Sequence[str], mean: Sequence[float], std: Sequence[float],
                  gradcam_layer: nn.Module | None = None, multilabel: bool = False,
                  seed: int | None = None) -> list[Explanation]:
    """Explain ``model``'s output for each class in ``classes``, in that order.

    ``image``: one (3, H, W) tensor normalised with ``mean``/``std``, on the model's device; ``model``
    returns logits (N, C). ``classes``: class indices (the caller picks them: the argmax for a
    multi-class model, each class above the threshold for a multi-label one); none gives ``[]``.
    ``titles[i]``: the figure's title for ``classes[i]``. ``gradcam_layer``: the layer guided Grad-CAM
    maps (required for ``guided_gradcam``, ignored otherwise). ``multilabel``: XRAI explains the sigmoid
    of the class's logit rather than its softmax probability. ``seed``: the same seed gives the same
    attributions. Every ``Explanation`` carries its attributions, whatever ``options.attributions``
    says (the caller decides what to return); ``figure_png`` is None unless ``options.visualizations``.
    Raises ValueError on options out of range, a missing Grad-CAM layer, a badly shaped image, or a
    class the model does not have.
    """
    _check_arguments(image, classes, options, titles, mean, std, gradcam_layer)
    if not classes:
        return []
    attribute = _METHODS[options.algorithm]
    with _model_lock(model), _explaining(model), _seeded(seed, image.device):
        # The image may come from a caller's torch.inference_mode: a clone outside it can take gradients.
        image = image.detach().clone()
        with torch.no_grad():
            logits = model(image.unsqueeze(0))
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise ValueError(f"the model should return logits of shape (N, C); got {tuple(logits.shape)}")
        unknown = [c for c in classes if not 0 <= int(c) < logits.shape[1]]
        if unknown:
            raise ValueError(f"classes {unknown} are not among the model's {logits.shape[1]} classes")
        maps = [attribute(_Request(model, image, int(c), options, mean, std, gradcam_layer, multilabel))
                for c in classes]
    figures: list[bytes | None] = [None] * len(maps)
    if options.visualizations:
        from visionsweep.explaining.figure import denormalize, explanation_figure

        pixels = denormalize(image.cpu().numpy(), mean, std)
        figures = [explanation_figure(pixels, attributions, title) for attributions, title in zip(maps, titles)]
    return [Explanation(int(c), attributions, figure) for c, attributions, figure in zip(classes, maps, figures)]


@dataclass(frozen=True)
class _Request:
    model: nn.Module
    image: torch.Tensor  # (3, H, W), normalised
    target: int
    options: ExplanationOptions
    mean: Sequence[float]
    std: Sequence[float]
    gradcam_layer: nn.Module | None
    multilabel: bool


def _integrated_gradients(request: _Request) -> np.ndarray:
    from captum.attr import IntegratedGradients, NoiseTunnel

    tunnel = NoiseTunnel(IntegratedGradients(request.model))
    return _as_array(tunnel.attribute(_input(request), nt_type="smoothgrad", nt_samples=NOISE_SAMPLES,
                                      nt_samples_batch_size=NOISE_BATCH, stdevs=NOISE_STDEV, target=request.target,
                                      n_steps=request.options.n_steps, method=request.options.approximation_method,
                                      internal_batch_size=STEPS_BATCH))


def _guided_backprop(request: _Request) -> np.ndarray:
    from captum.attr import GuidedBackprop, NoiseTunnel

    tunnel = NoiseTunnel(GuidedBackprop(request.model))
    return _as_array(tunnel.attribute(_input(request), nt_type="smoothgrad", nt_samples=NOISE_SAMPLES,
                                      nt_samples_batch_size=NOISE_BATCH, stdevs=NOISE_STDEV, target=request.target))


def _guided_gradcam(request: _Request) -> np.ndarray:
    from captum.attr import GuidedGradCam

    assert request.gradcam_layer is not None  # checked in explain_image
    return _as_array(GuidedGradCam(request.model, request.gradcam_layer).attribute(_input(request),
                                                                                  target=request.target))


def _xrai(request: _Request) -> np.ndarray:
    from saliency.core import INPUT_OUTPUT_GRADIENTS, XRAI, XRAIParameters

    image = request.image
    mean = torch.tensor(request.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(request.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    # saliency works on (H, W, 3) numpy images; XRAI's integration runs in the [0, 1] pixel frame.
    pixels = (image.unsqueeze(0) * std + mean).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    height, width = pixels.shape[:2]
    if np.ptp(pixels) == 0:
        # A flat image: both baselines equal it, so every gradient integral is zero (and saliency's
        # segmentation would divide by zero).
        return np.zeros((3, height, width), dtype=np.float32)

    def call_model(batch: np.ndarray, call_model_args: object = None,
                   expected_keys: object = None) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(image.device, image.dtype)
        x = x.permute(0, 3, 1, 2).requires_grad_(True)
        logits = request.model((x - mean) / std)
        if request.multilabel:
            probability = torch.sigmoid(logits[:, request.target])
        else:
            probability = torch.softmax(logits, dim=1)[:, request.target]
        (gradient,) = torch.autograd.grad(probability.sum(), x)
        return {INPUT_OUTPUT_GRADIENTS: gradient.permute(0, 2, 3, 1).cpu().numpy()}

    algorithm = "fast" if request.options.xrai_fast else "full"
    parameters = XRAIParameters(steps=request.options.n_steps, algorithm=algorithm)
    heat = XRAI().GetMask(pixels, call_model, batch_size=STEPS_BATCH, extra_parameters=parameters)
    return np.repeat(np.asarray(heat, dtype=np.float32)[None], 3, axis=0)


_METHODS: dict[str, Callable[[_Request], np.ndarray]] = {
    "integrated_gradients": _integrated_gradients,
    "guided_backprop": _guided_backprop,
    "guided_gradcam": _guided_gradcam,
    "xrai": _xrai,
}
assert set(_METHODS) == set(XAI_ALGORITHMS)


def _input(request: _Request) -> torch.Tensor:
    # A batch of one that requires gradients (else captum warns that it switched them on itself).
    return request.image.unsqueeze(0).requires_grad_(True)


def _as_array(attributions: torch.Tensor) -> np.ndarray:
    return attributions.detach()[0].to(torch.float32).cpu().numpy()


def _check_arguments(image: torch.Tensor, classes: Sequence[int], options: ExplanationOptions, titles: Sequence[str],
                     mean: Sequence[float], std: Sequence[float], gradcam_layer: nn.Module | None) -> None:
    if options.algorithm not in XAI_ALGORITHMS:
        raise ValueError(f"xai_algorithm: got {options.algorithm!r}; use one of {', '.join(XAI_ALGORITHMS)}")
    if options.algorithm == "guided_gradcam" and gradcam_layer is None:
        raise ValueError("guided_gradcam needs a convolutional layer to map (gradcam_layer) and this model has "
                         "none; use xrai, integrated_gradients or guided_backprop")
    if isinstance(options.n_steps, bool) or not isinstance(options.n_steps, int) \
            or not 2 <= options.n_steps <= MAX_STEPS:
        raise ValueError(f"n_steps: got {options.n_steps!r}; use an integer from 2 to {MAX_STEPS}")
    if options.approximation_method not in APPROXIMATION_METHODS:
        raise ValueError(f"approximation_method: got {options.approximation_method!r}; use one of "
                         f"{', '.join(APPROXIMATION_METHODS)}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected one (3, H, W) tensor; got shape {tuple(image.shape)}")
    if len(titles) != len(classes):
        raise ValueError(f"got {len(titles)} titles for {len(classes)} classes; give one title per class")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std: expected 3 values each; got {len(mean)} and {len(std)}")


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.Lock:
    """One lock per model: explanations switch its ReLUs and mode and hook it, so two at once would clash."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, non-inplace ReLUs and gradients enabled for the call; the model as it was afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    inplace = [module for module in model.modules() if isinstance(module, nn.ReLU) and module.inplace]
    had_grad = {id(parameter) for parameter in model.parameters() if parameter.grad is not None}
    try:
        model.eval()
        for module in inplace:
            module.inplace = False
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for module in inplace:
            module.inplace = True
        for parameter in model.parameters():
            if parameter.grad is not None and id(parameter) not in had_grad:
                parameter.grad = None


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators (the CPU's and, for a CUDA image, its device's) inside ``fork_rng``."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
