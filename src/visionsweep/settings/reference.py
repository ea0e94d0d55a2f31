"""The settings reference page (docs/settings.md), generated from the schema so it cannot drift."""
from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from visionsweep.settings.resolve import ALIASES
from visionsweep.settings.schema import MAX_TILES_PER_SIDE, Settings, scope_of

_VARYING = {
    "model_name": "task default: vitb16r224 (classification), yolov5 (detection), maskrcnn_resnet50_fpn "
                  "(segmentation)",
    "number_of_epochs": "15; yolov5 30",
    "training_batch_size": "classification 78 (vits16r224 128, vitb16r224 48, vitl16r224 10); R-CNN 2; yolov5 16",
    "validation_batch_size": "classification as training; R-CNN 1; yolov5 16",
    "learning_rate": "multi-class 0.01 (vits/vitb 0.0125, vitl 0.001); multi-label 0.035 (vits/vitb 0.025, "
                     "vitl 0.002); R-CNN 0.005; yolov5 0.01",
    "grad_clip_type": "value; ViT models norm",
    "num_workers": "classification and yolov5 8, R-CNN 4, capped at the CPU count",
    "primary_metric": "accuracy, iou (multi-label), mean_average_precision (detection, segmentation)",
    "train_crop_size": "224; ViT models: valid_crop_size",
    "box_score_thresh": "0.3; yolov5 0.1",
}


def settings_reference() -> str:
    """Markdown table of every setting: name, Azure v2 alias, type and range, default, scope, meaning."""
    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    lines = [
        "# Settings reference",
        "",
        "Generated from `visionsweep.settings.schema` by `python -m visionsweep.settings.reference`;",
        "a test fails when this page is out of date. Every key can be given in a settings file",
        "(`--config`), with `--set KEY=VALUE`, in Python (`settings={...}`), or in a job's",
        "`training_parameters` and `search_space`. Azure's v2 names are accepted as aliases.",
        "The upper bounds of sizes and counts (Azure has none) are explained in",
        "[security.md](security.md#size-and-count-limits-of-settings).",
        "",
        "| key | aliases | type and allowed values | default | applies to | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if name == "task":
            continue
        default = _VARYING.get(name, _default(field.default))
        lines.append(f"| `{name}` | {', '.join(f'`{a}`' for a in aliases.get(name, [])) or ''} | "
                     f"{_allowed(field)} | {default} | {scope_of(name).describe()} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


def _default(value: Any) -> str:
    return "unset" if value is None else f"`{value}`"


def _allowed(field: Any) -> str:
    annotation, metadata, optional = field.annotation, list(field.metadata), False
    if get_origin(annotation) in (Union, UnionType):
        annotation, optional = next(a for a in get_args(annotation) if a is not type(None)), True
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += [m for item in extra for m in getattr(item, "metadata", [item])]
    if get_origin(annotation) is Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in get_args(annotation))
    elif get_origin(annotation) is tuple:
        text = f"two ints from 1 to {MAX_TILES_PER_SIDE} (columns, rows), e.g. `3x2`"
    else:
        text = annotation.__name__
    bounds = [f"{symbol} {getattr(item, attribute)}" for item in metadata
              for attribute, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
              if getattr(item, attribute, None) is not None]
    if bounds:
        text += " " + ", ".join(bounds)
    return text + (", or unset" if optional else "")


if __name__ == "__main__":
    print(settings_reference(), end="")
