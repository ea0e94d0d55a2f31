"""The layering rules of docs/architecture.md, checked on the package's own imports, and the one
selection point: each model name's family, and the family object a run gets."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionsweep import model_catalog
from visionsweep.errors import SettingsError
from visionsweep.families.classification import ClassificationFamily
from visionsweep.families.rcnn import MaskRcnnFamily, RcnnFamily
from visionsweep.families.selection import FAMILIES, family_for
from visionsweep.families.tiling import TiledDetection
from visionsweep.families.yolo import YoloFamily
from visionsweep.models import create_model, get_model_spec, list_models, register_model, registry
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "visionsweep"
FAMILY_PACKAGES = ("classification", "rcnn", "yolo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the visionsweep modules it names in an import, at the top or inside a function."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("visionsweep"):
                # ``from package import module`` names the module; ``from module import name`` the module
                found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                             else node.module for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
        graph[name] = found & modules.keys() - {name}
    return graph


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph[module]):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                found = cycle_from(target, path + [target])
                if found:
                    return found
        done.add(module)
        return None

    cycles = [cycle for module in sorted(graph) if module not in done
              for cycle in [cycle_from(module, [module])] if cycle]
    assert cycles == []


def test_training_and_inference_do_not_import_each_other():
    graph = _imports()
    crossing = [(a, b) for a, targets in graph.items() for b in targets
                if (_in(a, "visionsweep.training") and _in(b, "visionsweep.inference"))
                or (_in(a, "visionsweep.inference") and _in(b, "visionsweep.training"))]
    assert crossing == []


def test_families_sit_below_training_and_inference_and_apart_from_each_other():
    graph = _imports()
    for module, targets in graph.items():
        if not _in(module, "visionsweep.families"):
            continue
        for target in targets:
            assert not any(_in(target, f"visionsweep.{layer}") for layer in ("training", "inference", "sweep", "api",
                                                                               "cli")), (module, target)
        own = next((f for f in FAMILY_PACKAGES if _in(module, f"visionsweep.families.{f}")), None)
        if own is not None:
            others = [t for t in targets for f in FAMILY_PACKAGES
                      if f != own and _in(t, f"visionsweep.families.{f}")]
            assert others == [], (module, others)


def test_exporting_sits_below_training_and_inference():
    # Training writes model.onnx and inference runs it: both build on exporting, never the other way.
    graph = _imports()
    for module, targets in graph.items():
        if _in(module, "visionsweep.exporting"):
            assert not any(_in(target, f"visionsweep.{layer}") for target in targets
                           for layer in ("training", "inference", "sweep", "api", "cli")), (module, targets)


def test_geometry_imports_nothing_of_visionsweep():
    graph = _imports()
    assert {(m, t) for m, ts in graph.items() if _in(m, "visionsweep.geometry")
            for t in ts if not _in(t, "visionsweep.geometry")} == set()


def test_reading_settings_does_not_import_torch():
    code = "import sys, visionsweep.settings, visionsweep.model_catalog; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- the catalog, the registry and the selection point ------------------------------------------------


def test_every_catalog_name_has_exactly_one_builder_and_serves_its_familys_tasks():
    assert sorted(list_models()) == sorted(model_catalog.MODEL_FAMILIES)
    for task in Task:
        assert sorted(list_models(task)) == sorted(model_catalog.model_names(task))
    assert set(FAMILIES) == set(model_catalog.FAMILY_TASKS)


def test_registering_a_name_twice_or_outside_the_catalog_is_an_error():
    with pytest.raises(ValueError, match="registered already"):
        register_model("resnet18", layer_groups=())(lambda num_classes: torch.nn.Linear(1, num_classes))
    with pytest.raises(ValueError, match="not in the model catalog"):
        register_model("resnet19", layer_groups=())(lambda num_classes: torch.nn.Linear(1, num_classes))
    assert "resnet19" not in list_models()


@pytest.mark.parametrize("task, model_name, family_type", [
    (Task.CLASSIFICATION, "resnet18", ClassificationFamily),
    (Task.MULTILABEL, "vits16r224", ClassificationFamily),
    (Task.OBJECT_DETECTION, "fasterrcnn_resnet18_fpn", RcnnFamily),
    (Task.OBJECT_DETECTION, "retinanet_resnet50_fpn", RcnnFamily),
    (Task.OBJECT_DETECTION, "yolov5", YoloFamily),
    (Task.INSTANCE_SEGMENTATION, "maskrcnn_resnet18_fpn", MaskRcnnFamily),
])
def test_family_for_picks_the_models_family(task, model_name, family_type):
    settings = resolve_settings(task, {"model_name": model_name})
    family = family_for(settings, ["a", "b"], torch.device("cpu"), lambda failures, stage: None)
    assert type(family) is family_type
    if task is Task.INSTANCE_SEGMENTATION:
        assert family.iou_type == "segm"


@pytest.mark.parametrize("model_name, inner", [("fasterrcnn_resnet18_fpn", RcnnFamily), ("yolov5", YoloFamily)])
def test_tiling_wraps_any_detector(model_name, inner):
    settings = resolve_settings(Task.OBJECT_DETECTION, {"model_name": model_name, "tile_grid_size": "2x1"})
    family = family_for(settings, ["a"], torch.device("cpu"), lambda failures, stage: None)
    assert isinstance(family, TiledDetection) and type(family.family) is inner
    assert family.tiling.grid == (2, 1) and family.family.track_training_metrics is False


def test_tiling_a_classifier_is_refused_where_the_family_is_chosen():
    settings = resolve_settings(Task.CLASSIFICATION, {"model_name": "resnet18"})
    tiled = settings.model_copy(update={"tile_grid_size": (2, 2)})  # past the schema's own check
    with pytest.raises(SettingsError, match="not a detector"):
        family_for(tiled, ["a"], torch.device("cpu"), lambda failures, stage: None)


def test_adding_a_model_as_docs_architecture_shows():
    """The worked example of docs/architecture.md, run as written; the name it adds is removed after."""
    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    example = text.split("## Adding a model to a family", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    try:
        exec(compile(example, "docs/architecture.md", "exec"), {})
        assert "resnet26" in list_models(Task.CLASSIFICATION) and "resnet26" in list_models(Task.MULTILABEL)
        assert "resnet26" not in list_models(Task.OBJECT_DETECTION)
        assert resolve_settings(Task.CLASSIFICATION, {"model_name": "resnet26"}).model_name == "resnet26"
        model = create_model("resnet26", 3, pretrained=False, layers_to_freeze=2)
        assert model.fc.out_features == 3 and len(get_model_spec("resnet26").layer_groups) == 5
        frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
        assert frozen == {"conv1", "bn1", "layer1"}
    finally:
        model_catalog.MODEL_FAMILIES.pop("resnet26", None)
        registry._REGISTRY.pop("resnet26", None)
    assert "resnet26" not in list_models()
