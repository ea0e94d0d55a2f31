"""The files models start from, for machines without network (``visionsweep weights``).

``model_files`` says which files a model name needs: its pretrained weights (one per ``model_size``
for YOLOv5), and for a Hugging Face model its config. ``download_weights`` fetches them on a connected
machine, into the caches or into a folder with a manifest of SHA-256 hashes; ``import_weights`` puts
such a folder, or single files, into the caches of an offline machine. A file is checked against the
hash its source publishes (torchvision and timm URLs carry the first hex digits of the SHA-256 in the
file name) or the manifest records, and read the way training reads it (no pickle runs), before it
goes into a cache: a bad file is refused, not found later by a failing trial.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from visionsweep.errors import SettingsError, WeightsUnavailableError
from visionsweep.model_catalog import HUGGING_FACE, MODEL_FAMILIES, open_model_source
from visionsweep.models.weights import WeightsSource, find_weights, offline, read_state_dict

if TYPE_CHECKING:
    from visionsweep.settings import Settings

MANIFEST = "visionsweep-weights.json"
# Where an imported Hugging Face file goes when the cache has no revision of its repository yet: the hub
# resolves "main" to this placeholder commit, which a later online download replaces.
_IMPORTED_REVISION = "0" * 40
_PUBLISHED_HASH = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")  # resnet18-f37072fd.pth
_YOLO_SIZES = ("small", "medium", "large", "xlarge")


@dataclass(frozen=True)
class ModelFile:
    """One file ``model`` needs: ``role`` says for what ("weights", "weights (model_size small)", "config")."""

    model: str
    role: str
    source: WeightsSource

    @property
    def origin(self) -> str:
        return self.source.url or f"huggingface.co/{self.source.hf_repo}/{self.source.filename}"

    def present(self) -> Path | None:
        return self.source.cached_file()


def model_files(model_name: str) -> list[ModelFile]:
    """The files ``model_name`` can need, whether a run needs them or not (``pretrained: false`` needs only
    a Hugging Face model's config)."""
    from visionsweep.models import get_model_spec

    if open_model_source(model_name) == HUGGING_FACE:  # the spec itself needs the config: list without it
        from visionsweep.models.open_models import HF_CONFIG_FILE, HF_PREPROCESSOR_FILE, huggingface_files

        roles = {HF_CONFIG_FILE: "config", HF_PREPROCESSOR_FILE: "preprocessor config (optional)"}
        return [ModelFile(model_name, roles.get(f.filename, "weights"), f) for f in huggingface_files(model_name)]
    spec = get_model_spec(model_name)
    if callable(spec.weights):
        return [ModelFile(model_name, f"weights (model_size {size})", spec.weights({"model_size": size}))
                for size in _YOLO_SIZES]
    return [ModelFile(model_name, "weights", spec.weights)] if spec.weights is not None else []


def list_weights(model_names: Iterable[str] | None = None) -> list[dict[str, str | bool]]:
    """One row per file: model, role, file name, origin, cache path, whether it is there."""
    rows = []
    for name in model_names or MODEL_FAMILIES:
        for file in model_files(name):
            found = file.present()
            rows.append({"model": file.model, "role": file.role, "file": file.source.filename, "origin": file.origin,
                         "cache_path": str(found or file.source.cache_path()), "present": found is not None})
    return rows


def download_weights(model_names: Iterable[str], into: Path | None = None) -> list[Path]:
    """Download every file of these models: into the caches, or (``into``) into a folder with a manifest
    that ``import_weights`` checks on the offline machine. Returns the files written."""
    written = []
    entries = []
    for name in model_names:
        for file in model_files(name):
            try:
                path = file.source.download() if into is None else _download_into(file.source, into)
            except Exception as error:  # network and hub errors of many types: all mean "not downloaded"
                if file.role.endswith("(optional)"):
                    continue  # a preprocessor config is optional: not every checkpoint publishes one
                raise WeightsUnavailableError(f"could not download {file.origin} ({name} {file.role}): "
                                              f"{type(error).__name__}: {error}") from None
            written.append(path)
            entries.append({"model": name, "file": (path.relative_to(into) if into else path).as_posix(),
                            "filename": file.source.filename,
                            "url": file.source.url, "hf_repo": file.source.hf_repo, "sha256": sha256_of(path)})
    if into is not None:
        manifest = {"format": "visionsweep-weights/1", "files": entries}
        (into / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return written


def import_weights(paths: Iterable[str | Path], *, model: str | None = None, sha256: str | None = None) -> list[Path]:
    """Put downloaded files into the caches; returns where they went.

    A folder written by ``download_weights`` is imported whole, each file checked against its manifest.
    A single file is matched to a model by its name (torchvision's, timm's and YOLOv5's file names are
    unique), or belongs to ``model``; ``sha256`` is the hash it must have (one file only). Every file is
    checked against the hash its source publishes, and read as training reads it, before it is copied.
    """
    paths = [Path(given) for given in paths]
    if sha256 is not None and (len(paths) != 1 or paths[0].is_dir()):
        raise SettingsError(["--sha256: the hash of one file; give that file alone (a folder's files are checked "
                             "against its manifest)"], context="weights import")
    if model is not None and any(path.is_dir() for path in paths):
        raise SettingsError(["--model: a folder's manifest names the model of each file; give --model with "
                             "single files only"], context="weights import")
    stored = []
    for path in paths:
        if path.is_dir():
            stored.extend(_import_folder(path))
        elif path.is_file():
            stored.append(_import_file(path, _source_for(path.name, model), expected=sha256))
        else:
            raise WeightsUnavailableError(f"{path} does not exist")
    return stored


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_into(source: WeightsSource, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if source.hf_repo is not None:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source.hf_repo, source.filename, local_dir=folder / source.hf_repo.replace("/", "--")))
    import torch

    target = folder / source.filename
    torch.hub.download_url_to_file(source.url, str(target), progress=False)
    return target


def _import_folder(folder: Path) -> list[Path]:
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise WeightsUnavailableError(f"{folder} has no {MANIFEST}: give the folder 'visionsweep weights download "
                                      "--into' wrote, or the files one by one (with --model for generic names)")
    try:
        entries = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        files = [(_manifest_path(folder, entry["file"]), _manifest_source(entry), entry["sha256"]) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsUnavailableError(f"{manifest_file} is not a manifest of 'visionsweep weights download': "
                                      f"{error}") from None
    for path, _, _ in files:
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}, listed in {manifest_file}, is missing")
    return [_import_file(path, source, expected=sha256) for path, source, sha256 in files]


_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _manifest_path(folder: Path, file: str) -> Path:
    """A file the manifest lists, which must lie inside its folder."""
    path = (folder / file).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"file {file!r} lies outside the folder")
    return path


def _manifest_source(entry: dict) -> WeightsSource:
    """The source a manifest entry names. Its file name and repository become cache paths, so only plain
    names pass (no ``..``, no folders): a crafted manifest cannot write outside the caches."""
    filename, repo = entry["filename"], entry["hf_repo"]
    parts = [filename] + (repo.split("/") if repo is not None else [])
    if (repo is not None and repo.count("/") != 1) or not all(_SAFE_NAME.fullmatch(p) and ".." not in p for p in parts):
        raise ValueError(f"filename {filename!r} / hf_repo {repo!r} are not plain names")
    known = [f.source for f in _catalog_files() if f.source.filename == filename]
    return WeightsSource(filename, url=entry["url"], hf_repo=repo, reader=known[0].reader if known else None)


def _catalog_files() -> list[ModelFile]:
    return [file for name in MODEL_FAMILIES for file in model_files(name)]


def _source_for(filename: str, model: str | None) -> WeightsSource:
    """The source a file of this name stands for: among ``model``'s files, or all of the catalog's."""
    candidates = model_files(model) if model else _catalog_files()
    matching = [f.source for f in candidates if f.source.filename == filename]
    if len(matching) == 1:
        return matching[0]
    if model is not None:
        raise WeightsUnavailableError(f"{model} needs no file named {filename}; it needs "
                                      f"{', '.join(f.source.filename for f in candidates) or 'none'}")
    raise WeightsUnavailableError(f"{filename} is not the name of a catalog model's weights file; say which model "
                                  "it belongs to with --model NAME (a timm or Hugging Face model's files are named "
                                  "model.safetensors, config.json ...)")


def _import_file(path: Path, source: WeightsSource, *, expected: str | None) -> Path:
    actual = sha256_of(path)
    if expected is not None and actual != expected.lower():
        raise WeightsUnavailableError(f"{path}: its SHA-256 is {actual}, not {expected}; the file changed since it "
                                      "was downloaded (or belongs to another model): download it again")
    published = _PUBLISHED_HASH.search(source.filename) if source.url else None
    if published and not actual.startswith(published.group(1)):
        raise WeightsUnavailableError(f"{path} is not the published {source.filename}: its SHA-256 {actual} does not "
                                      f"start with {published.group(1)}, the hash in the file's published name; "
                                      "download it again")
    _check_readable(path, source)
    target = _cache_target(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(path, partial)
    partial.replace(target)
    return target


def _check_readable(path: Path, source: WeightsSource) -> None:
    if path.suffix == ".json":
        from visionsweep.models.open_models import read_config_json

        read_config_json(path)
    else:
        (source.reader or read_state_dict)(path)


def _cache_target(source: WeightsSource) -> Path:
    if source.hf_repo is None:
        return source.cache_path()
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + source.hf_repo.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(_IMPORTED_REVISION)
    return repo / "snapshots" / ref.read_text().strip() / source.filename


def missing_files_problem(runs: Iterable[Settings]) -> str | None:
    """One message naming every file that runs with these settings need and cannot get, or None.

    A file is needed for ``pretrained`` without ``pretrained_weights`` (a Hugging Face model's config
    always). One that is not in the cache is downloaded now, unless downloads are off; after one failed
    download the others are not tried (the network is down), so an offline machine learns in seconds.
    """
    from visionsweep.models import get_model_spec

    needed: dict[tuple, ModelFile] = {}
    unpublished = []
    for settings in runs:
        name = settings.model_name
        wants_weights = settings.pretrained and settings.pretrained_weights is None
        if open_model_source(name) == HUGGING_FACE:
            files = [f for f in model_files(name) if f.role == "config" or (f.role == "weights" and wants_weights)]
        elif wants_weights:
            source = get_model_spec(name).weights_source(settings.model_dump())
            if source is None:
                unpublished.append(name)
            files = [ModelFile(name, "weights", source)] if source is not None else []
        else:
            files = []
        for file in files:
            needed.setdefault((file.source.url, file.source.hf_repo, file.source.filename), file)
    missing, network_failed = [], False
    for file in needed.values():
        if file.present() is not None:
            continue
        if network_failed or offline():
            missing.append(file)
            continue
        try:
            find_weights(file.model, file.source, None, what=file.role, attempts=1)
        except WeightsUnavailableError:
            missing.append(file)
            network_failed = True
    if not missing and not unpublished:
        return None
    lines = []
    if unpublished:
        lines.append(f"{', '.join(sorted(set(unpublished)))}: no pretrained weights are published; give a file with "
                     "pretrained_weights, or set pretrained: false to train from scratch")
    if missing:
        models = list(dict.fromkeys(f.model for f in missing))
        why = "downloads are off (offline mode)" if offline() else "the download failed (no network?)"
        lines.append(f"pretrained files of {len(models)} model(s) are not in the cache and {why}:")
        lines += [f"  {f.model} {f.role}: {f.source.cache_path()} (from {f.origin})" for f in missing]
        lines.append(f"Get them on a connected machine with 'visionsweep weights download {' '.join(models)} --into "
                     "DIR', then run 'visionsweep weights import DIR' here; or set pretrained: false to train from "
                     "scratch" + (" (a Hugging Face model needs its config even then)"
                                  if any(f.role == "config" for f in missing) else ""))
    return "\n".join(lines)


def check_model_name(name: str) -> None:
    """``SettingsError`` unless ``name`` is a model visionsweep can build."""
    if name not in MODEL_FAMILIES and open_model_source(name) is None:
        raise SettingsError([f"{name!r} is not a model name; see 'visionsweep models'"], context="weights")
