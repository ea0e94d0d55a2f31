"""The report of a sweep: ``report.html`` in the sweep folder, rewritten as trials finish.

``write_sweep_report(sweep_dir)`` reads the sweep's study the way ``visionsweep status`` does
(``sweep.json`` names the study and its storage) and writes the page and, in ``report_data/``, one
CSV per figure plus ``leaderboard.csv`` (the board as ``leaderboard.write_leaderboard`` writes it).
The runner calls it after each trial ends and once more at the end, passing its open study.

What it shows: the leaderboard (``leaderboard.leaderboard_rows``), the primary metric over trials
with the running best, parallel coordinates of the swept values, Optuna's parameter importances
(fANOVA), each trial's learning curve, the failed trials with their errors and logs, and links to
the best trial's run report and to ``best_model/``. Every figure is drawn with ``figures`` (no pyplot).
Nothing here raises because the sweep is young or odd: too few trials give a note instead of a figure.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

import optuna
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from visionsweep.reports.figures import Figure, Series, Table, bar_chart, draw, line_chart
from visionsweep.reports.page import REPORT_DATA_FOLDER, REPORT_FILE, render, write_report
from visionsweep.sweep import attrs
from visionsweep.sweep.leaderboard import (
    BEST_MODEL_DIR, BEST_TRIAL_FILE, LEADERBOARD_FILE, LeaderboardRow, best_row, format_duration, leaderboard_rows,
    write_leaderboard,
)
from visionsweep.sweep.sweep_folder import open_sweep_study, read_sweep_file
from visionsweep.sweep.trial_process import LOG_FILE

CURVE_LIMIT = 20
"""Learning curves drawn: the best this many scored trials, plus the running ones (the CSV has every trial)."""
FIGURE_NAMES = ("optimization_history", "parallel_coordinates", "param_importances", "learning_curves")
_MISSING = object()
_importances_cache: dict[str, Any] = {}  # the last importances computed in this process, with their trials
_STATUS_STYLE = {  # points of the optimization history
    attrs.COMPLETED: {"marker": "o", "color": "#4c72b0"},
    attrs.EARLY_STOPPED: {"marker": "s", "color": "#55a868"},
    attrs.CANCELLED: {"marker": "x", "color": "#dd8452"},
}


def write_sweep_report(sweep_dir: str | Path, *, study: optuna.Study | None = None) -> Path:
    """Write ``sweep_dir/report.html`` (and ``report_data/``) from the sweep's study; returns its path.

    ``study``: the sweep's study when the caller has it open (the runner); by default it is opened
    from ``sweep.json`` as ``visionsweep status`` does. Raises ``SettingsError`` when the folder
    holds no sweep."""
    sweep_dir = Path(sweep_dir)
    if study is None:
        record, study = open_sweep_study(sweep_dir)
    else:
        record = read_sweep_file(sweep_dir)
    rows = leaderboard_rows(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}  # after the rows: holds every row's trial
    summary = study.user_attrs.get(attrs.JOB_SUMMARY, {})
    metric = str(summary.get("primary_metric") or record.get("primary_metric") or "primary metric")
    folders = {row.trial: _trial_folder(row, sweep_dir) for row in rows}
    scored = [r for r in rows if _has_score(r)]

    made = {name: _figure_or_note(build, *args) for name, build, args in (
        ("optimization_history", _history, (scored, metric)),
        ("parallel_coordinates", _parallel_coordinates, (scored, metric)),
        ("param_importances", _importances, (study,)),
        ("learning_curves", _learning_curves, (rows, trials, folders, metric)))}
    figures = [figure for figure in made.values() if isinstance(figure, Figure)]
    notes = {name: note for name, note in made.items() if isinstance(note, str)}
    shown = {figure.name: figure for figure in figures}

    data_folder = sweep_dir / REPORT_DATA_FOLDER
    data_folder.mkdir(parents=True, exist_ok=True)
    write_leaderboard(rows, data_folder / LEADERBOARD_FILE, metric)
    html = render("sweep.html.j2", title=f"Sweep {record['study_name']}",
                  summary=_summary(record, summary, study, rows, metric),
                  metric=metric, leaderboard=_board(rows, folders, sweep_dir),
                  figures={name: shown.get(name) for name in FIGURE_NAMES}, notes=notes,
                  failures=_failures(rows, trials, folders, sweep_dir),
                  best=_best(rows, folders, sweep_dir, metric),
                  leaderboard_csv=f"{REPORT_DATA_FOLDER}/{LEADERBOARD_FILE}")
    path = write_report(sweep_dir, html, figures)
    for name in FIGURE_NAMES:  # a figure shown by an earlier write and now a note leaves no stale CSV behind
        if name not in shown:
            (data_folder / f"{name}.csv").unlink(missing_ok=True)
    return path


# --- the page's tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    """A leaderboard cell: the text shown and what it sorts by (``number``: right-aligned)."""

    text: str
    value: str = ""
    number: bool = False


def _summary(record: dict[str, Any], summary: dict[str, Any], study: optuna.Study, rows: Sequence[LeaderboardRow],
             metric: str) -> list[tuple[str, str]]:
    budget = int(study.user_attrs.get(attrs.BUDGET, 0))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    ended = sum(n for status, n in counts.items() if status not in (attrs.RUNNING, attrs.WAITING))
    shown = ", ".join(f"{counts[s]} {s.replace('_', '-')}" for s in (
        attrs.COMPLETED, attrs.EARLY_STOPPED, attrs.CANCELLED, attrs.FAILED, attrs.RUNNING, attrs.WAITING)
        if counts.get(s))
    lines = [("study", str(record["study_name"])),
             ("task", str(summary.get("task") or record.get("task") or "?")),
             ("primary metric", metric),
             ("plan", str(summary.get("plan") or "")),
             ("progress", f"{ended} of {budget} trials ended" + (f" ({shown})" if shown else "")),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    return [(name, value) for name, value in lines if value]


def _board(rows: Sequence[LeaderboardRow], folders: dict[int, Path | None], sweep_dir: Path) -> dict[str, Any]:
    keys = [k for k in _config_keys(rows) if k != "model_name"]
    cells = []
    for rank, row in enumerate(rows, 1):
        model = row.config.get("model_name", _MISSING)
        if model is _MISSING:
            model = _model_name(folders.get(row.trial))
        cells.append({
            "rank": rank, "trial": row.trial, "status": row.status, "score": row.score,
            "best_epoch": row.best_epoch, "epochs_run": row.epochs_run,
            "duration": _Cell(format_duration(row.duration_s, missing=""),
                              "" if row.duration_s is None else f"{row.duration_s:.3f}", True),
            "model": _value_cell(model),
            "values": [_value_cell(row.config.get(k, _MISSING)) for k in keys],
            "note": _first_line(row.note),
            "folder": _href(folders.get(row.trial), sweep_dir),
        })
    return {"columns": keys, "rows": cells}


def _failures(rows: Sequence[LeaderboardRow], trials: dict[int, FrozenTrial], folders: dict[int, Path | None],
              sweep_dir: Path) -> list[dict[str, Any]]:
    failures = []
    for row in rows:
        if row.status != attrs.FAILED:
            continue
        user = trials[row.trial].user_attrs if row.trial in trials else {}
        folder = folders.get(row.trial)
        log = folder / LOG_FILE if folder is not None else None
        if log is None or not log.is_file():
            recorded = user.get(attrs.LOG)
            log = Path(recorded) if recorded and Path(recorded).is_file() else None
        failures.append({"trial": row.trial, "kind": str(user.get(attrs.ERROR_KIND) or "exception"),
                         "message": str(user.get(attrs.ERROR) or row.note or "no error message was recorded"),
                         "log": _href(log, sweep_dir)})
    return failures


def _best(rows: Sequence[LeaderboardRow], folders: dict[int, Path | None], sweep_dir: Path,
          metric: str) -> dict[str, Any] | None:
    best = best_row(rows)
    if best is None:
        return None
    folder = folders.get(best.trial)
    report = folder / REPORT_FILE if folder is not None else None
    copied_trial = None
    if (sweep_dir / BEST_MODEL_DIR).is_dir():
        try:
            copied_trial = json.loads((sweep_dir / BEST_TRIAL_FILE).read_text()).get("trial")
        except (OSError, ValueError):
            copied_trial = None
    return {"trial": best.trial, "score": best.score, "status": best.status, "metric": metric,
            "folder": _href(folder, sweep_dir),
            "report": _href(report, sweep_dir) if report is not None and report.is_file() else None,
            "best_model": f"{BEST_MODEL_DIR}/" if (sweep_dir / BEST_MODEL_DIR).is_dir() else None,
            "best_model_trial": copied_trial}


# --- the figures ---------------------------------------------------------------------------------------------


def _figure_or_note(build: Callable[..., Figure | str], *args: Any) -> Figure | str:
    """A figure, or the note said instead: the builder's own (too few trials), or the error that stopped it
    (one figure that cannot be drawn does not cost the report)."""
    try:
        return build(*args)
    except Exception as error:  # noqa: BLE001
        return f"This figure could not be drawn: {type(error).__name__}: {_first_line(str(error))}"


def _history(scored: Sequence[LeaderboardRow], metric: str) -> Figure | str:
    """The best value of each scored trial by trial number, and the best so far (Optuna's optimization history)."""
    if not scored:
        return "No trial has a score yet: the primary metric over trials is drawn once one has."
    ordered = sorted(scored, key=lambda r: r.trial)
    best_so_far, top = [], -math.inf
    for row in ordered:
        top = max(top, float(row.score))  # type: ignore[arg-type]
        best_so_far.append(top)
    table = Table(("trial", "status", metric, "best so far"),
                  [(r.trial, r.status, r.score, b) for r, b in zip(ordered, best_so_far)])

    def paint(axes: Axes) -> None:
        for status, style in _STATUS_STYLE.items():
            points = [r for r in ordered if r.status == status]
            if points:
                axes.plot([r.trial for r in points], [r.score for r in points], linestyle="none", markersize=6,
                          label=status.replace("_", "-"), **style)
        axes.plot([r.trial for r in ordered], best_so_far, drawstyle="steps-post", color="#c44e52", linewidth=1.5,
                  label="best so far")
        axes.set_xlabel("trial")
        axes.set_ylabel(metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")

    return draw("optimization_history", f"{metric} over trials", table, paint,
                note="each trial's best value (a cancelled trial's too: it keeps its best checkpoint) and the best "
                     "so far")


def _parallel_coordinates(scored: Sequence[LeaderboardRow], metric: str) -> Figure | str:
    """One line per scored trial through an axis per swept value that varies, and the metric; coloured by it."""
    if len(scored) < 2:
        return (f"Not enough trials for parallel coordinates: {len(scored)} trial(s) with a score, at least 2 "
                "are needed.")
    keys = [k for k in _config_keys(scored) if len({_identity(r.config.get(k, _MISSING)) for r in scored}) > 1]
    if not keys:
        return "No parameter varies among the trials with a score: nothing to draw in parallel coordinates."
    ordered = sorted(scored, key=lambda r: (r.score, -r.trial))  # the best drawn last, on top
    axes_values = [_axis([r.config.get(k, _MISSING) for r in ordered]) for k in keys]
    axes_values.append(_axis([r.score for r in ordered]))
    names = [*keys, metric]
    table = Table(("trial", metric, *keys),
                  [(r.trial, r.score, *(_csv_value(r.config.get(k, _MISSING)) for k in keys))
                   for r in sorted(scored, key=lambda r: r.trial)])
    low, high = min(r.score for r in ordered), max(r.score for r in ordered)  # type: ignore[type-var]
    norm = Normalize(low, high if high > low else low + 1e-12)
    colours = colormaps["viridis"]

    def paint(axes: Axes) -> None:
        for i, row in enumerate(ordered):
            ys = [positions[i] for positions, _ in axes_values]
            axes.plot(range(len(names)), ys, color=colours(norm(row.score)), alpha=0.85,
                      linewidth=2.4 if i == len(ordered) - 1 else 1.2, marker="o", markersize=3)
        for x, (_, ticks) in enumerate(axes_values):
            axes.axvline(x, color="#999", linewidth=0.8, zorder=0)
            for y, text in ticks:
                axes.text(x + 0.04, y, text, fontsize=7, va="center", color="#333")
        axes.set_xticks(range(len(names)), [_short(n, 18) for n in names], fontsize=8,
                        rotation=20 if len(names) > 4 else 0)
        axes.set_yticks([])
        axes.set_xlim(-0.15, len(names) - 0.4)
        axes.set_ylim(-0.06, 1.06)
        for side in ("top", "right", "left"):
            axes.spines[side].set_visible(False)
        axes.figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=axes, shrink=0.85).set_label(metric,
                                                                                                     fontsize=8)

    width = min(max(6.0, 1.4 * len(names) + 2.0), 12.0)
    return draw("parallel_coordinates", "Parallel coordinates", table, paint, size=(width, 3.8),
                note=f"{len(scored)} trials with a score, the best drawn thickest; numeric axes run from the lowest "
                     "value to the highest (log scale when they span 10x or more), choices are spread evenly; the "
                     "parameters that vary are shown")


def _importances(study: optuna.Study) -> Figure | str:
    """Optuna's parameter importances (its default evaluator, fANOVA, seeded) over the trials Optuna holds as
    complete: completed and early-stopped ones (a cancelled trial is pruned, a failed one failed)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return (f"Parameter importances need at least 2 completed or early-stopped trials (cancelled and failed "
                f"trials do not count); {len(completed)} so far.")
    # Optuna evaluates the parameters every one of these trials has; one that never changed among them gets
    # a share all the same (the forest's noise), so only those that vary are asked for.
    shared = set.intersection(*(set(t.params) for t in completed))
    varying = sorted(name for name in shared if len({_identity(t.params[name]) for t in completed}) > 1)
    if not varying:
        return ("Parameter importances: no parameter that every completed or early-stopped trial has takes more "
                "than one value among them.")
    # The same trials give the same importances (the evaluator is seeded): a report rewritten after a
    # cancelled or failed trial reuses them.
    key = (study.study_name, tuple((t.number, t.value, _identity(t.params)) for t in completed))
    if _importances_cache.get("key") == key:
        importances = _importances_cache["value"]
    else:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
        except Exception as error:  # noqa: BLE001 - whatever Optuna refuses is a note, never a failed report
            return f"Parameter importances could not be computed: {type(error).__name__}: {_first_line(str(error))}"
        _importances_cache.update(key=key, value=importances)
    pairs = [(name, float(value)) for name, value in importances.items() if math.isfinite(value)]
    if not pairs:
        return "Parameter importances: Optuna gave no finite importance for these trials."
    return bar_chart("param_importances", "Parameter importances", [p[0] for p in pairs], [p[1] for p in pairs],
                     value_label="importance",
                     note=f"Optuna's fANOVA over the {len(completed)} completed or early-stopped trials (importances "
                          "add up to 1); names are Optuna's parameters (key@N: the key of sub-space N)")


def _learning_curves(rows: Sequence[LeaderboardRow], trials: dict[int, FrozenTrial],
                     folders: dict[int, Path | None], metric: str) -> Figure | str:
    curves: list[tuple[LeaderboardRow, list[tuple[int, float]]]] = []
    for row in rows:
        points = _curve(folders.get(row.trial), trials.get(row.trial))
        if points:
            curves.append((row, points))
    if not curves:
        return "No trial has reported a validation value yet: the learning curves are drawn once one has."
    scored = [c for c in curves if _has_score(c[0])]
    running = [c for c in curves if c[0].status == attrs.RUNNING]
    others = [c for c in curves if not _has_score(c[0]) and c[0].status != attrs.RUNNING]
    drawn = scored[:CURVE_LIMIT] + running + others[:max(0, CURVE_LIMIT - len(scored))]
    drawn.sort(key=lambda c: c[0].trial)
    series = []
    for row, points in drawn:
        label = f"trial {row.trial}" + ("" if row.status == attrs.COMPLETED else f" ({row.status.replace('_', '-')})")
        marked = (len(points) - 1,) if row.status == attrs.CANCELLED else ()
        series.append(Series(label, [p[0] for p in points], [p[1] for p in points], marked))
    note = "x: where a cancelled trial stopped"
    if len(drawn) < len(curves):
        note += (f"; {len(drawn)} of {len(curves)} trials drawn (the {CURVE_LIMIT} best and the running ones), "
                 "every trial is in the CSV")
    figure = line_chart("learning_curves", f"{metric} per epoch", series, x_label="epoch", y_label=metric, note=note)
    table = Table(("trial", "status", "epoch", metric),
                  [(row.trial, row.status, epoch, value) for row, points in sorted(curves, key=lambda c: c[0].trial)
                   for epoch, value in points])
    return replace(figure, table=table)


def _curve(folder: Path | None, trial: FrozenTrial | None) -> list[tuple[int, float]]:
    """(epoch, primary metric) of a trial's evaluated epochs: its ``metrics.jsonl``, else the values it
    reported to Optuna (by validation pass, the epoch when every epoch is evaluated)."""
    points: dict[int, float] = {}
    metrics = folder / "metrics.jsonl" if folder is not None else None
    if metrics is not None and metrics.is_file():
        try:
            lines = metrics.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                epoch = json.loads(line)
                value = epoch.get("primary_value")
                if epoch.get("evaluated", value is not None) and value is not None and math.isfinite(float(value)):
                    points[int(epoch["epoch"])] = float(value)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # a line being written, or not one of ours
    if not points and trial is not None:
        points = {int(step): float(value) for step, value in trial.intermediate_values.items()
                  if math.isfinite(value)}
    return sorted(points.items())


def _axis(values: Sequence[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] of one parallel-coordinates axis (NaN where a trial has no value) and its labels."""
    present = [v for v in values if v is not _MISSING and v is not None]
    if present and all(_is_number(v) for v in present):
        low, high = min(present), max(present)
        log = low > 0 and high >= 10 * low
        scale = math.log10 if log else float
        a, b = scale(low), scale(high)
        positions = [math.nan if v is _MISSING or v is None else ((scale(v) - a) / (b - a) if b > a else 0.5)
                     for v in values]
        ticks = [(0.0, _format(low)), (1.0, _format(high) + (" (log)" if log else ""))] if b > a else \
            [(0.5, _format(low))]
        return positions, ticks
    labels = sorted({_format(v) for v in present})
    spread = {label: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, label in enumerate(labels)}
    positions = [math.nan if v is _MISSING or v is None else spread[_format(v)] for v in values]
    return positions, [(y, _short(label, 16)) for label, y in spread.items()]


# --- small helpers -------------------------------------------------------------------------------------------


def _trial_folder(row: LeaderboardRow, sweep_dir: Path) -> Path | None:
    """The trial's folder on this machine: ``trials/trial_NNNN`` of the sweep folder when it is there (the
    runner records it under the run folder as it was given, maybe relative to another working folder),
    else the recorded path."""
    if not row.trial_dir:
        return None
    recorded = Path(row.trial_dir)
    for folder in (sweep_dir / recorded.parent.name / recorded.name, recorded):
        if folder.is_dir():
            return folder
    return None


def _model_name(folder: Path | None) -> Any:
    """The model a trial trained when the sweep did not choose it: from the trial's spec or run settings."""
    if folder is None:
        return _MISSING
    for name, key in (("trial_spec.json", "settings"), ("settings.json", None)):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        settings = data.get(key, {}) if key else data
        if isinstance(settings, dict) and settings.get("model_name"):
            return settings["model_name"]
    return _MISSING


def _href(target: Path | None, sweep_dir: Path) -> str | None:
    """A link from the report to ``target``, relative to the sweep folder (percent-encoded)."""
    if target is None:
        return None
    try:
        relative = os.path.relpath(target.resolve(), sweep_dir.resolve())
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()
    return quote(relative.replace(os.sep, "/")) + ("/" if target.is_dir() else "")


def _has_score(row: LeaderboardRow) -> bool:
    return row.status in attrs.SCORED and row.score is not None and math.isfinite(row.score)


def _config_keys(rows: Iterable[LeaderboardRow]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row.config if k not in keys)
    return keys


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _identity(value: Any) -> str:
    return "\0missing" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_format(v) for v in value)
    return str(value)


def _value_cell(value: Any) -> _Cell:
    if value is _MISSING or value is None:
        return _Cell("")
    if _is_number(value):
        return _Cell(_format(value), repr(value), True)
    return _Cell(_format(value))


def _csv_value(value: Any) -> Any:
    if value is _MISSING:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["CURVE_LIMIT", "write_sweep_report"]
