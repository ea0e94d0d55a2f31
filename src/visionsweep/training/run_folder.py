"""The files a training run owns in its folder, and the rule for a folder that already holds a run.

A run never writes into an earlier run's folder by accident: the two runs' logs and metrics would
mix, and the model folder would no longer match ``settings.json``. Writing there is refused unless
``overwrite`` is given; then the earlier run's files, and only those, are removed first. Other
files in the folder (a sweep trial's ``trial_spec.json`` and ``process.log``, anything of the
user's) are left alone.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from visionsweep.errors import RunFolderError

RUN_FILES = ("settings.json", "data_report.json", "train.jsonl", "validation.jsonl", "metrics.jsonl", "train.log",
             "checkpoints", "model", "report.html", "report_data")


def check_run_folder(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse ``run_dir`` when it holds files of an earlier run, unless ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"output {run_dir} is a file, not a folder; choose a folder for the run")
    earlier = _earlier_run_files(run_dir)
    if earlier and not overwrite:
        names = [p.name + ("/" if p.is_dir() else "") for p in earlier]
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise RunFolderError(f"output folder {run_dir} already holds a run ({listed}); choose another output "
                             "folder, or replace that run with --overwrite (overwrite=True in Python)")


def clear_run_folder(run_dir: Path) -> None:
    """Remove an earlier run's files from ``run_dir`` (nothing else) and make sure the folder exists."""
    for path in _earlier_run_files(run_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _earlier_run_files(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return [run_dir / name for name in RUN_FILES if (run_dir / name).exists() or (run_dir / name).is_symlink()]
