"""The sweep report (``report.html`` in the sweep folder): real sweeps with the stand-in trainer, the page
opened in headless Chromium. ``reporting_train`` wraps ``sweep_helpers.fake_train`` to write what
visionsweep's trainer writes for the report (``metrics.jsonl``, the run's ``report.html``), to stop one
trial itself (cancelled) and to fail with an error whose text is markup."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep_helpers import EXITS, RAISES, fake_train, job_writer
from visionsweep.cli import main
from visionsweep.sweep import attrs
from visionsweep.sweep.report import CURVE_LIMIT, write_sweep_report
from visionsweep.sweep.job import load_job
from visionsweep.sweep.runner import run_sweep
from visionsweep.sweep.storage import open_storage

TRAINER = "test_sweep_report:reporting_train"
CANCELS = 0.0061  # the trainer stops this trial after epoch 2 (cancelled, with its best checkpoint)
MARKUP = 0.0022  # the trainer raises ERROR_TEXT
ERROR_TEXT = 'bad <b>value</b> & "quoted" <script>document.title = "hacked"</script>'
DOC_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "sweep-report.png"
FIGURES = ["optimization_history", "parallel_coordinates", "param_importances", "learning_curves"]


def reporting_train(task, data, validation_data=None, *, settings, output, epoch_callback=None, progress=True,
                    overwrite=False):
    lr = settings["learning_rate"]
    if lr == MARKUP:
        raise ValueError(ERROR_TEXT)
    epochs = []

    def callback(report):
        epochs.append({"epoch": report.epoch, "evaluated": report.evaluated, "primary_value": report.primary_value})
        stop = epoch_callback(report) if epoch_callback else False
        return stop or (lr == CANCELS and report.epoch >= 2)

    result = fake_train(task, data, validation_data, settings=settings, output=output, epoch_callback=callback,
                        progress=progress, overwrite=overwrite)
    (Path(output) / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))
    (Path(output) / "report.html").write_text("<!DOCTYPE html><title>run</title><p>the run's report</p>")
    return result


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """Four completed trials (two models, two learning rates), one cancelled and one failed."""
    folder = tmp_path_factory.mktemp("mixed")
    path = job_writer(folder)(f"""\
        limits: {{max_trials: 6, max_concurrent_trials: 3}}
        training_parameters: {{number_of_epochs: 3}}
        sweep: {{sampling_algorithm: grid}}
        search_space:
          - model_name: "choice('resnet18', 'mobilenetv2')"
            learning_rate: "choice(0.005, 0.007)"
          - model_name: resnet34
            learning_rate: "choice({CANCELS}, {MARKUP})"
        """)
    result, lines = _run(path, folder / "run")
    assert result.counts == {"completed": 4, "cancelled": 1, "failed": 1}
    return result, lines


def _run(path: Path, run_dir: Path, progress=None):
    """Run the job with ``reporting_train`` on CPU; returns the result and the progress lines."""
    lines: list[str] = []
    result = run_sweep(load_job(path), run_dir, trainer=TRAINER, devices=[], poll_interval_s=0.05,
                       progress=progress or lines.append)
    return result, lines


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as lines:
        return list(csv.DictReader(lines))


@pytest.mark.slow
def test_the_report_of_a_sweep_shows_its_board_figures_failures_and_best_trial(mixed_sweep, tmp_path):
    from browser_helpers import open_report

    result, lines = mixed_sweep
    run_dir = result.run_dir
    report = run_dir / "report.html"
    assert f"report: {report}" in lines and lines[-1] == f"report: {report}"
    with open_report(report, tmp_path / "sweep-report.png") as opened:
        page = opened.page
        assert opened.errors == []
        if os.environ.get("VISIONSWEEP_WRITE_DOC_SCREENSHOTS") == "1":  # the picture in docs/reports.md
            DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(DOC_SCREENSHOT), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": 1600})
        plots = opened.plots()
        assert [p["id"] for p in plots] == [f"figure-{name}" for name in FIGURES]
        assert all(p["width"] > 0 and p["height"] > 0 and p["colours"] > 1 for p in plots), plots

        rows = page.query_selector_all("#leaderboard-table tbody tr")
        assert len(rows) == len(result.rows) == 6
        first = lambda: int(page.get_attribute("#leaderboard-table tbody tr:first-child", "data-trial"))  # noqa: E731
        scored = [r for r in result.rows if r.score is not None]
        assert first() == result.best.trial  # the board's order: best first
        headings = opened.texts("#leaderboard-table thead th")
        metric_heading = page.query_selector_all("#leaderboard-table thead th")[headings.index("accuracy")]
        metric_heading.click()  # ascending: the lowest score first, trials without one last
        lowest = min(r.score for r in scored)
        assert first() in {r.trial for r in scored if r.score == lowest} and first() != result.best.trial
        assert int(page.get_attribute("#leaderboard-table tbody tr:last-child", "data-trial")) == next(
            r.trial for r in result.rows if r.status == "failed")
        metric_heading.click()  # descending: the best first again
        assert first() in {r.trial for r in scored if r.score == result.best.score}
        statuses = opened.texts("#leaderboard-table tbody td:nth-child(3)")
        assert sorted(statuses) == sorted(r.status for r in result.rows)
        assert {"resnet18", "mobilenetv2", "resnet34"} <= set(opened.texts("#leaderboard-table tbody td"))

        # The failed trial's error is shown as text: its markup is neither rendered nor run.
        failed = next(r for r in result.rows if r.status == "failed")
        assert opened.texts("#failures-table tbody tr") and ERROR_TEXT in opened.texts("#failures-table pre")[0]
        assert page.query_selector("#failures-table b") is None and page.title() != "hacked"
        log = page.get_attribute(f'#failures-table tr[data-trial="{failed.trial}"] a', "href")
        assert (run_dir / log).resolve() == (run_dir / "trials" / f"trial_{failed.trial:04d}" / "process.log").resolve()
        assert (run_dir / log).is_file()

        # The best trial's run report (the stand-in writes one) and best_model/, linked relatively.
        href = page.get_attribute("#best-report", "href")
        assert href == f"trials/trial_{result.best.trial:04d}/report.html" and (run_dir / href).is_file()
        assert page.get_attribute("#best-model", "href") == "best_model/" and (run_dir / "best_model").is_dir()
    assert (tmp_path / "sweep-report.png").stat().st_size > 0


@pytest.mark.slow
def test_the_report_csvs_hold_the_leaderboard_numbers(mixed_sweep):
    result, _ = mixed_sweep
    data = result.run_dir / "report_data"
    assert main(["report", str(result.run_dir)]) == 0  # again, from the folder alone: the same numbers
    board = _csv(result.run_dir / "leaderboard.csv")
    assert _csv(data / "leaderboard.csv") == board
    scores = {int(r["trial"]): float(r["accuracy"]) for r in board if r["accuracy"]}
    assert len(scores) == 5  # four completed, one cancelled
    history = _csv(data / "optimization_history.csv")
    assert {int(r["trial"]): float(r["accuracy"]) for r in history} == scores
    best_so_far = [float(r["best so far"]) for r in history]
    assert best_so_far == sorted(best_so_far) and best_so_far[-1] == max(scores.values())
    parallel = _csv(data / "parallel_coordinates.csv")
    by_trial = {int(r["trial"]): r for r in board}
    assert {int(r["trial"]): float(r["accuracy"]) for r in parallel} == scores
    for row in parallel:
        assert row["model_name"] == by_trial[int(row["trial"])]["model_name"]
        assert float(row["learning_rate"]) == float(by_trial[int(row["trial"])]["learning_rate"])
    curves: dict[int, list[tuple[int, float]]] = {}
    for row in _csv(data / "learning_curves.csv"):
        curves.setdefault(int(row["trial"]), []).append((int(row["epoch"]), float(row["accuracy"])))
    assert set(curves) == set(scores)  # the failed trial reported nothing
    for trial, points in curves.items():
        assert max(value for _, value in points) == pytest.approx(scores[trial])
        assert [epoch for epoch, _ in points] == list(range(1, int(by_trial[trial]["epochs_run"]) + 1))
    cancelled = next(int(r["trial"]) for r in board if r["status"] == "cancelled")
    assert len(curves[cancelled]) == 2
    importances = _csv(data / "param_importances.csv")
    assert importances and math.isclose(sum(float(r["importance"]) for r in importances), 1.0, abs_tol=1e-6)


@pytest.mark.slow
def test_a_sweep_whose_trials_all_failed_gets_a_report_with_notes(tmp_path):
    from browser_helpers import open_report

    path = job_writer(tmp_path)(f"""\
        limits: {{max_trials: 2, max_concurrent_trials: 2}}
        training_parameters: {{number_of_epochs: 1}}
        search_space:
          - learning_rate: "choice({RAISES}, {EXITS})"
        sweep: {{sampling_algorithm: grid}}
        """)
    result, lines = _run(path, tmp_path / "run")
    assert result.counts == {"failed": 2} and lines[-1] == f"report: {tmp_path / 'run' / 'report.html'}"
    with open_report(tmp_path / "run" / "report.html", tmp_path / "failed.png") as opened:
        assert opened.errors == []
        assert opened.plots() == []
        for name in FIGURES:
            assert opened.texts(f"#note-{name}"), name
        errors = " ".join(opened.texts("#failures-table pre"))
        assert "synthetic failure in epoch 1" in errors and "exited with status 7" in errors
        assert len(opened.texts("#failures-table tbody tr")) == 2
        assert opened.texts("#best-trial") == ["No trial has a score yet."]
    assert sorted(p.name for p in (tmp_path / "run" / "report_data").iterdir()) == ["leaderboard.csv"]


@pytest.mark.slow
def test_the_report_is_rewritten_as_trials_end_and_a_failed_write_does_not_stop_the_sweep(tmp_path, monkeypatch):
    from visionsweep.sweep import report as sweep_report

    path = job_writer(tmp_path)("""\
        limits: {max_trials: 2, max_concurrent_trials: 1}
        training_parameters: {number_of_epochs: 1}
        search_space:
          - learning_rate: "choice(0.005, 0.007)"
        sweep: {sampling_algorithm: grid}
        """)
    run_dir = tmp_path / "run"
    seen: list[tuple[str, dict[str, str] | None, str | None]] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("trial ") and " completed: " in line:  # what the report showed as the trial ended
            board = run_dir / "report_data" / "leaderboard.csv"
            seen.append((line, {r["trial"]: r["status"] for r in _csv(board)} if board.is_file() else None,
                         (run_dir / "report.html").read_text() if (run_dir / "report.html").is_file() else None))

    writes = []
    real = sweep_report.write_sweep_report

    def write_once(sweep_dir, **options):  # the first write works, later ones fail
        writes.append(sweep_dir)
        if len(writes) > 1:
            raise OSError("disk full <simulated>")
        return real(sweep_dir, **options)

    monkeypatch.setattr(sweep_report, "write_sweep_report", write_once)
    lines: list[str] = []
    result, _ = _run(path, run_dir, progress)
    assert result.counts == {"completed": 2}
    (first_line, first_board, _), (second_line, second_board, second_html) = seen
    assert first_board is None  # nothing written before the first trial ended
    first, second = (int(line.split()[1]) for line in (first_line, second_line))
    # Written after the first trial ended, while the second ran.
    assert second_board == {str(first): "completed", str(second): "running"}
    assert second_html is not None and "1 of 2 trials ended" in second_html
    # The final write failed: one warning line, and the sweep ended as usual.
    assert len(writes) == 2
    assert [line for line in lines if line.startswith(("report:", "warning:"))] == [
        "warning: the sweep report was not written (OSError: disk full <simulated>)"]
    assert (run_dir / "leaderboard.csv").is_file() and (run_dir / "best_model").is_dir()


def test_the_learning_curves_draw_the_best_trials_and_the_running_ones_and_the_csv_has_all(tmp_path):
    """A study written by hand (no trial processes): 28 scored trials, one running, one failed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sweep.json").write_text(json.dumps({"format": 1, "study_name": "many", "storage": None,
                                                    "task": "image_classification", "primary_metric": "accuracy"}))
    study = optuna.create_study(storage=open_storage(None, run_dir), study_name="many", direction="maximize")
    study.set_user_attr(attrs.BUDGET, 30)
    distributions = {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
                     "model_name": CategoricalDistribution(["resnet18", "resnet50"])}
    for number in range(30):
        lr, model = 1e-4 * 1.25 ** number, ("resnet18", "resnet50")[number % 2]
        curve = {epoch: number / 100 + epoch / 10 for epoch in range(1, 4)}
        state, status = {27: (TrialState.PRUNED, attrs.CANCELLED), 28: (TrialState.RUNNING, attrs.RUNNING),
                         29: (TrialState.FAIL, attrs.FAILED)}.get(number, (TrialState.COMPLETE, attrs.COMPLETED))
        if number == 27:
            curve = {1: curve[1]}
        user = {attrs.STATUS: status, attrs.CONFIG: {"learning_rate": lr, "model_name": model}}
        if status in attrs.SCORED:
            user.update({attrs.BEST_SCORE: max(curve.values()), attrs.EPOCHS_RUN: len(curve)})
        if status == attrs.FAILED:
            curve, user[attrs.ERROR] = {}, "RuntimeError: <nothing> reported"
        study.add_trial(create_trial(
            state=state, value=max(curve.values()) if state == TrialState.COMPLETE else None, user_attrs=user,
            params={"learning_rate": lr, "model_name": model}, distributions=distributions,
            intermediate_values=curve))
    html = write_sweep_report(run_dir).read_text()  # opened from sweep.json, as visionsweep status does
    assert f"{CURVE_LIMIT + 1} of 29 trials drawn" in html  # the 20 best and the running one
    curves = _csv(run_dir / "report_data" / "learning_curves.csv")
    assert len({row["trial"] for row in curves}) == 29 and len(curves) == 27 * 3 + 1 + 3
    assert html.count("<tr data-trial=") == 30 + 1  # the board and the failure
    assert "RuntimeError: &lt;nothing&gt; reported" in html
    importances = _csv(run_dir / "report_data" / "param_importances.csv")
    assert {row["name"] for row in importances} == {"learning_rate", "model_name"}
