"""The search-space grammar: both spellings, every distribution's semantics, casting, schema checks."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from scipy import stats

from visionsweep.errors import SettingsError
from visionsweep.settings import resolve_settings
from visionsweep.settings.partial import cast_value
from visionsweep.sweep.distributions import Distribution
from visionsweep.sweep.space import (
    SUBSPACE_PARAM, grid_points, parse_expression, parse_object, parse_search_space, parse_value, suggest,
)
from visionsweep.sweep.space_checks import check_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (string spelling, object spelling) of every distribution.
SPELLINGS = [
    ("choice('sgd', 'adamw')", {"type": "choice", "values": ["sgd", "adamw"]}),
    ("randint(5)", {"type": "randint", "upper": 5}),
    ("uniform(0.001, 0.01)", {"type": "uniform", "min_value": 0.001, "max_value": 0.01}),
    ("quniform(10, 30, 5)", {"type": "quniform", "min_value": 10, "max_value": 30, "q": 5}),
    ("loguniform(-6.9, -3.0)", {"type": "loguniform", "min_value": -6.9, "max_value": -3.0}),
    ("qloguniform(0, 4.6, 10)", {"type": "qloguniform", "min_value": 0, "max_value": 4.6, "q": 10}),
    ("normal(3, 2)", {"type": "normal", "mu": 3, "sigma": 2}),
    ("qnormal(0, 1, 0.5)", {"type": "qnormal", "mu": 0, "sigma": 1, "q": 0.5}),
    ("lognormal(0, 0.5)", {"type": "lognormal", "mu": 0, "sigma": 0.5}),
    ("qlognormal(0, 1, 1)", {"type": "qlognormal", "mu": 0, "sigma": 1, "q": 1}),
]


@pytest.mark.parametrize("text, obj", SPELLINGS, ids=[o["type"] for _, o in SPELLINGS])
def test_both_spellings_give_the_same_distribution(text, obj):
    from_text = parse_value(text)
    from_object = parse_value(obj)
    assert isinstance(from_text, Distribution)
    assert from_text == from_object
    # The canonical string spelling reads back to the same distribution, and so does the object one.
    assert parse_expression(from_text.describe()) == from_text
    assert parse_object(from_text.to_object()) == from_text


def test_tokenizer_reads_quotes_numbers_words_lists_and_ranges():
    d = parse_expression("""choice('a,b', "c)d", 'it\\'s', -1.5e-3, 2, None, sgd, 3x2, [3, 2], (5, 3),)""")
    assert d.values == ("a,b", "c)d", "it's", -0.0015, 2, None, "sgd", "3x2", (3, 2), (5, 3))
    assert parse_expression("choice(true, False)").values == (True, False)
    assert parse_expression("choice(range(1, 10, 3))").values == (1, 4, 7)
    assert parse_expression("choice([16, 32])").values == (16, 32)
    assert parse_expression("Uniform( min_value = -1 , max_value=1 )").params == {"min_value": -1, "max_value": 1}
    assert parse_expression("quniform(1, max_value=9, q=2)").params == {"min_value": 1, "max_value": 9, "q": 2}


@pytest.mark.parametrize("literal", ["warmup_cosine", "3x2", "choice", "sgd", "uniformity", "(3, 2)", 0.01, [3, 2],
                                     {"a": 1}])
def test_literals_stay_literals(literal):
    assert parse_value(literal) == literal


@pytest.mark.parametrize("text, fragment", [
    ("unifrom(1, 2)", "did you mean 'uniform'"),
    ("uniform(2, 1)", "min_value 2 is larger than max_value 1"),
    ("uniform(1)", "missing max_value"),
    ("uniform(1, 2, 3)", "takes 2 argument(s)"),
    ("uniform(min=1, max=2)", "has no parameter 'min'"),
    ("uniform(1, 'a')", "max_value must be a finite number"),
    ("choice()", "non-empty list"),
    ("choice('a', 'a')", "'a' listed more than once"),
    ("choice(1, true)", "mixes true/false with numbers"),
    ("choice('a'", "ends early"),
    ("choice('a)", "unbalanced quote"),
    ("choice(1) extra", "unexpected text after"),
    ("randint(0)", "upper must be a whole number >= 1"),
    ("randint(2.5)", "upper must be a whole number >= 1"),
    ("normal(0, 0)", "sigma must be > 0"),
    ("quniform(0, 1, 0)", "q must be > 0"),
    ("loguniform(0.001, 1000)", "are exponents"),
])
def test_bad_expressions_say_what_is_wrong(text, fragment):
    with pytest.raises(SettingsError) as error:
        parse_value(text)
    assert fragment in str(error.value)


def test_bad_object_lists_every_problem():
    with pytest.raises(SettingsError) as error:
        parse_object({"type": "uniform", "min": 0, "max_value": "x", "low": 1})
    assert len(error.value.problems) == 2  # the two unknown parameter names
    with pytest.raises(SettingsError, match="unknown distribution 'gaussian'"):
        parse_object({"type": "gaussian", "mu": 0})


def _draw(space_raw, n, seed=0):
    space, problems = parse_search_space(space_raw)
    assert not problems
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(suggest(trial, space).values)
        study.tell(trial, 0.0)
    return samples


@pytest.fixture(scope="module")
def draws():
    """2,000 draws of every distribution, through Optuna trials as the runner does."""
    keys = {f"k_{obj['type']}": obj for _, obj in SPELLINGS}
    samples = _draw([keys], 2000, seed=1)
    return {name.removeprefix("k_"): np.array([s[name] for s in samples], dtype=object) for name in keys}


def _share(values, target):
    return float(np.mean([v == target for v in values]))


def _close(observed, expected, n=2000):
    # 5 standard errors of a binomial share: fails by chance about once in 3.5 million runs.
    return abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


def test_choice_is_uniform_over_its_values(draws):
    values = list(draws["choice"])
    counts = [values.count("sgd"), values.count("adamw")]
    assert sum(counts) == 2000
    assert stats.chisquare(counts).pvalue > 1e-4


def test_randint_excludes_its_upper_bound(draws):
    values = draws["randint"].astype(int)
    assert set(values) == {0, 1, 2, 3, 4}
    assert all(isinstance(v, int) for v in draws["randint"])
    assert stats.chisquare(np.bincount(values)).pvalue > 1e-4


def test_uniform_fills_its_closed_range(draws):
    values = draws["uniform"].astype(float)
    assert values.min() >= 0.001 and values.max() <= 0.01
    assert stats.kstest(values, stats.uniform(0.001, 0.009).cdf).pvalue > 1e-4


def test_loguniform_bounds_are_exponents(draws):
    values = draws["loguniform"].astype(float)
    assert values.min() >= math.exp(-6.9) and values.max() <= math.exp(-3.0)
    assert stats.kstest(np.log(values), stats.uniform(-6.9, 3.9).cdf).pvalue > 1e-4


def test_quniform_rounds_to_multiples_of_q_anchored_at_zero(draws):
    values = draws["quniform"].astype(float)
    # round(U(10, 30) / 5) * 5: the end values get half the weight of the inner ones.
    assert set(values) == {10.0, 15.0, 20.0, 25.0, 30.0}
    assert _close(_share(values, 10.0), 0.125) and _close(_share(values, 30.0), 0.125)
    assert _close(_share(values, 20.0), 0.25)


def test_qloguniform_rounds_the_exponentiated_value():
    samples = _draw([{"x": "qloguniform(0, 4.605170185988092, 10)"}], 2000, seed=2)  # exp(U) in [1, 100]
    values = np.array([s["x"] for s in samples])
    assert set(values) <= {float(10 * k) for k in range(11)}
    # round(x / 10) == 0 when x < 5: probability log(5) / log(100).
    assert _close(_share(values, 0.0), math.log(5) / math.log(100))


def test_normal_is_unbounded_gaussian(draws):
    values = draws["normal"].astype(float)
    assert stats.kstest(values, stats.norm(3, 2).cdf).pvalue > 1e-4
    assert values.min() < 3 - 2 * 2 and values.max() > 3 + 2 * 2  # tails beyond two sigma are reached


def test_lognormal_is_exp_of_a_gaussian(draws):
    values = draws["lognormal"].astype(float)
    assert values.min() > 0
    assert stats.kstest(np.log(values), stats.norm(0, 0.5).cdf).pvalue > 1e-4


def test_qnormal_rounds_a_gaussian(draws):
    values = draws["qnormal"].astype(float)
    assert np.all(np.isclose(values / 0.5, np.round(values / 0.5)))
    assert _close(_share(values, 0.0), stats.norm.cdf(0.25) - stats.norm.cdf(-0.25))


def test_qlognormal_rounds_exp_of_a_gaussian(draws):
    values = draws["qlognormal"].astype(float)
    assert values.min() >= 0 and np.all(values == np.round(values))
    assert _close(_share(values, 0.0), stats.norm.cdf(math.log(0.5)))


@pytest.mark.parametrize("key, value, expected", [
    ("number_of_epochs", 15.0, 15), ("number_of_epochs", 2.6, 3), ("layers_to_freeze", 2.0, 2),
    ("weighted_loss", 1.0, 1), ("learning_rate", 1, 1.0), ("momentum", 0, 0.0), ("nesterov", True, True),
    ("model_name", "resnet18", "resnet18"), ("training_crop_size", 224.0, 224), ("not_a_setting", 2.0, 2.0),
])
def test_values_are_cast_to_the_schema_type(key, value, expected):
    cast = cast_value(key, value)
    assert cast == expected and type(cast) is type(expected)


def test_sampled_values_arrive_cast():
    samples = _draw([{"number_of_epochs": "quniform(10, 30, 5)", "learning_rate": "choice(1, 0.1)"}], 50)
    assert all(type(s["number_of_epochs"]) is int for s in samples)
    assert all(type(s["learning_rate"]) is float for s in samples)


def test_the_schema_rejects_a_sampled_value():
    with pytest.raises(SettingsError) as error:
        resolve_settings("image_classification", {"model_name": "resnet18", "learning_rate": 1.5})
    assert any(p.startswith("learning_rate: got 1.5") for p in error.value.problems)


def test_space_check_finds_values_the_schema_rejects_before_any_trial():
    space, _ = parse_search_space([{
        "model_name": "choice('resnet18', 'resnet5')", "learning_rate": "uniform(0.5, 2)",
        "optimizer": "choice('sgd', 'adamx')", "number_of_epochs": "quniform(0, 10, 5)",
        "momentum": "normal(0.9, 0.2)"}])
    problems, notes = check_space("image_classification", {}, space)
    text = "\n".join(problems)
    assert "model_name: got 'resnet5'" in text
    assert "learning_rate=2.0 (from uniform(0.5, 2)) is rejected" in text
    assert "optimizer='adamx'" in text
    assert "number_of_epochs=0 (from quniform(0, 10, 5))" in text  # rounding reaches 0 epochs
    # The normal family is unbounded: a rejected far quantile is a warning, not an error.
    assert any("momentum=" in n for n in notes) and "momentum" not in text


def test_space_check_leaves_rules_between_keys_to_each_trial():
    space, _ = parse_search_space([{"model_name": "vitb16r224", "training_crop_size": "choice(224, 256)",
                                    "validation_crop_size": "choice(224, 256)"}])
    problems, notes = check_space("image_classification", {}, space)
    assert problems == []  # half of the draws are fine
    assert any("train_crop_size == valid_crop_size" in n for n in notes)


def test_space_check_rejects_keys_of_another_task_and_unknown_keys():
    space, _ = parse_search_space([{"min_size": "choice(600, 800)", "learning_rat": 0.1}])
    problems, _ = check_space("image_classification", {}, space)
    assert any("min_size: does not apply to image_classification" in p for p in problems)
    assert any("learning_rat: unknown setting; did you mean 'learning_rate'" in p for p in problems)


def test_conditional_space_draws_only_the_chosen_subspace():
    raw = [{"model_name": "choice('vitb16r224', 'vits16r224')", "learning_rate": "uniform(0.001, 0.01)"},
           {"model_name": "resnet50", "learning_rate": "loguniform(-6.9, -3)", "layers_to_freeze": "choice(0, 2)"}]
    samples = _draw(raw, 200, seed=3)
    first = [s for s in samples if s["model_name"] != "resnet50"]
    second = [s for s in samples if s["model_name"] == "resnet50"]
    assert 60 < len(first) < 140  # the sub-space is itself a uniform choice
    assert all(set(s) == {"model_name", "learning_rate"} for s in first)
    assert all(set(s) == {"model_name", "learning_rate", "layers_to_freeze"} for s in second)
    assert all(0.001 <= s["learning_rate"] <= 0.01 for s in first)


def test_conditional_space_uses_one_optuna_name_per_subspace_key():
    space, _ = parse_search_space([{"learning_rate": "uniform(0.1, 0.2)"}, {"learning_rate": "normal(0.5, 0.1)"}])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(20):
        trial = study.ask()
        suggest(trial, space)
        names |= set(trial.params)
        study.tell(trial, 0.0)
    assert names == {SUBSPACE_PARAM, "learning_rate@0", "learning_rate@1.quantile"}


def test_grid_points_enumerate_each_subspace():
    space, _ = parse_search_space([{"a": "choice(1, 2)", "b": "choice('x', 'y', 'z')", "c": 7}, {"d": "choice(3, 4)"}])
    points = grid_points(space)
    assert len(points) == 2 * 3 + 2
    assert points[0] == {SUBSPACE_PARAM: 0, "a@0": 1, "b@0": "x"}
    assert points[-1] == {SUBSPACE_PARAM: 1, "d@1": 4}
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


def test_list_valued_choices_travel_through_optuna():
    samples = _draw([{"tile_grid_size": "choice((3, 2), (5, 3))"}], 30)
    assert {tuple(s["tile_grid_size"]) for s in samples} == {(3, 2), (5, 3)}


def test_search_space_round_trips_through_its_object_spelling():
    space, _ = parse_search_space([{"model_name": "yolov5", "model_size": "choice('small', 'medium')",
                                    "learning_rate": "uniform(0.0005, 0.01)", "tile_grid_size": "choice('2x1', '3x2')"},
                                   {"model_name": "fasterrcnn_resnet50_fpn", "min_size": "choice(600, 800)"}])
    again, problems = parse_search_space(space.to_raw())
    assert not problems and again == space


@pytest.mark.parametrize("raw, fragment", [
    ({"learning_rate": "uniform(1)"}, "search_space[0].learning_rate: uniform: missing max_value"),
    ([{"a": 1}, "x"], "search_space[1]: must be a mapping"),
    ([], "non-empty list"),
    ([{"learning_rate_scheduler": "step", "lr_scheduler": "step"}], "are the same setting"),
])
def test_search_space_problems_name_their_place(raw, fragment):
    _, problems = parse_search_space(raw)
    assert any(fragment in p for p in problems), problems
