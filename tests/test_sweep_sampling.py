"""Sampling algorithms: parsing, restrictions, slot seeding, grid points, Sobol, TPE."""
from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest

from visionsweep.sweep import attrs
from visionsweep.sweep.sampling import (
    SamplingSpec, assigned_points, budget_for, check_sampling, make_sampler, parse_sampling,
)
from visionsweep.sweep.space import parse_search_space, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SPACE, _ = parse_search_space([
    {"model_name": "choice('vitb16r224', 'vits16r224')", "learning_rate": "uniform(0.001, 0.01)"},
    {"model_name": "choice('seresnext', 'resnet50')", "learning_rate": "loguniform(-6.9, -3)",
     "layers_to_freeze": "choice(0, 2)", "momentum": "normal(0.9, 0.02)"},
])


def _run(spec, slots, points=(), space=SPACE, objective=None):
    """Draw one configuration per slot (in the given order) through a fresh in-memory study."""
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, points))
    drawn = {}
    for slot in slots:
        trial = study.ask()
        trial.set_user_attr(attrs.SLOT, slot)
        if slot < len(points):
            trial.set_user_attr(attrs.POINT, slot)
        values = suggest(trial, space).values
        drawn[slot] = values
        study.tell(trial, objective(values) if objective else 0.0)
    return drawn


@pytest.mark.parametrize("raw, expected", [
    ("random", SamplingSpec("random")),
    ("Bayesian", SamplingSpec("bayesian")),
    ({"type": "random", "seed": 7, "rule": "sobol"}, SamplingSpec("random", 7, "sobol")),
    ({"type": "GRID", "seed": 3}, SamplingSpec("grid", 3)),
    ({"type": "bayesian", "n_startup_trials": 4}, SamplingSpec("bayesian", n_startup_trials=4)),
])
def test_parse_sampling_spellings(raw, expected):
    assert parse_sampling(raw) == (expected, [])


@pytest.mark.parametrize("raw, fragment", [
    (None, "required when sweep is given"),
    ("hyperband", "allowed: random, grid, bayesian"),
    ({"type": "grid", "rule": "sobol"}, "sobol applies to random sampling only"),
    ({"type": "random", "seed": -1}, "seed: must be a whole number >= 0"),
    ({"type": "random", "seeds": 1}, "seeds: unknown key"),
    ({"type": "random", "n_startup_trials": 3}, "applies to bayesian sampling only"),
])
def test_parse_sampling_problems(raw, fragment):
    spec, problems = parse_sampling(raw)
    assert spec is None and any(fragment in p for p in problems), problems


def test_grid_takes_choice_only():
    problems, _ = check_sampling(SamplingSpec("grid"), SPACE, has_policy=False)
    assert [p.split(":")[0] for p in problems] == [
        "search_space[0].learning_rate", "search_space[1].learning_rate", "search_space[1].momentum"]
    assert "grid sampling takes only choice(...), got uniform(0.001, 0.01)" in problems[0]


def test_bayesian_is_more_permissive_than_azure_and_says_so():
    problems, notes = check_sampling(SamplingSpec("bayesian"), SPACE, has_policy=True)
    assert problems == []
    text = "\n".join(notes)
    assert "loguniform, normal" in text and "several sub-spaces" in text and "early termination" in text


def test_grid_budget_and_points():
    space, _ = parse_search_space([{"a": "choice(1, 2)", "b": "choice(3, 4, 5)"}, {"c": "choice(6, 7)"}])
    assert budget_for(SamplingSpec("grid"), space, 20) == 8
    assert budget_for(SamplingSpec("grid"), space, 5) == 5
    assert budget_for(SamplingSpec("random"), space, 20) == 20
    points = assigned_points(SamplingSpec("grid", seed=1), space)
    again = assigned_points(SamplingSpec("grid", seed=1), space)
    other = assigned_points(SamplingSpec("grid", seed=2), space)
    assert points == again and points != other and sorted(map(str, points)) == sorted(map(str, other))
    assert assigned_points(SamplingSpec("random"), space) == []


def test_grid_trials_take_their_points():
    space, _ = parse_search_space([{"a": "choice(1, 2)", "b": "choice(3, 4, 5)"}, {"c": "choice(6, 7)"}])
    points = assigned_points(SamplingSpec("grid"), space)
    drawn = _run(SamplingSpec("grid"), range(8), points, space)
    combos = {tuple(sorted(v.items())) for v in drawn.values()}
    assert len(combos) == 8  # every point once


def test_seeded_random_draws_depend_on_the_slot_only():
    forward = _run(SamplingSpec("random", seed=11), range(8))
    backward = _run(SamplingSpec("random", seed=11), reversed(range(8)))
    assert forward == backward
    assert forward != _run(SamplingSpec("random", seed=12), range(8))
    assert len({str(v) for v in forward.values()}) == 8


def test_unseeded_random_differs_between_runs():
    assert _run(SamplingSpec("random"), range(4)) != _run(SamplingSpec("random"), range(4))


def test_sobol_covers_the_unit_interval_evenly():
    space, _ = parse_search_space([{"x": "uniform(0, 1)", "y": "uniform(0, 1)"}])
    drawn = _run(SamplingSpec("random", seed=5, rule="sobol"), range(17), space=space)
    assert drawn == _run(SamplingSpec("random", seed=5, rule="sobol"), range(17), space=space)
    # Trial 0 is random (Optuna's QMCSampler infers its space from it); the next 16 are a
    # scrambled Sobol net: exactly one point in each sixteenth of [0, 1].
    xs = np.array([drawn[slot]["x"] for slot in range(1, 17)])
    assert sorted(np.floor(xs * 16).astype(int)) == list(range(16))


def test_bayesian_tpe_concentrates_near_the_optimum():
    space, _ = parse_search_space([{"learning_rate": "uniform(0, 1)"}])

    def objective(values):
        return -(values["learning_rate"] - 0.3) ** 2

    def late_error(spec):
        drawn = _run(spec, range(40), space=space, objective=objective)
        return np.mean([abs(drawn[s]["learning_rate"] - 0.3) for s in range(25, 40)])

    tpe = np.mean([late_error(SamplingSpec("bayesian", seed=seed, n_startup_trials=8)) for seed in range(3)])
    rnd = np.mean([late_error(SamplingSpec("random", seed=seed)) for seed in range(3)])
    assert tpe < 0.7 * rnd


def test_bayesian_handles_conditional_spaces_and_repeats_with_a_seed():
    spec = SamplingSpec("bayesian", seed=3, n_startup_trials=4)

    def objective(values):
        return values["learning_rate"]

    first = _run(spec, range(12), objective=objective)
    assert first == _run(spec, range(12), objective=objective)
    families = {0 if v["model_name"].startswith("vit") else 1 for v in first.values()}
    assert families == {0, 1}


def test_assigned_points_win_over_the_sampler_and_the_rest_is_sampled():
    points = [{"subspace": 1, "model_name@1": "resnet50", "learning_rate@1": 0.005}]
    drawn = _run(SamplingSpec("bayesian", seed=0), range(3), points)
    assert drawn[0]["model_name"] == "resnet50" and drawn[0]["learning_rate"] == 0.005
    assert set(drawn[0]) == {"model_name", "learning_rate", "layers_to_freeze", "momentum"}
