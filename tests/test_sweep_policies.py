"""Early-termination policies decide correctly on hand-made metric histories."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from visionsweep.errors import SettingsError
from visionsweep.sweep.policies import (
    BanditPruner, MedianStoppingPruner, PolicySpec, TruncationSelectionPruner, bandit_stops, is_due, make_pruner,
    median_stops, parse_policy, truncation_stops,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- when a policy acts -------------------------------------------------------------------------------


@pytest.mark.parametrize("t, due", [(1, False), (4, False), (5, False), (6, True), (7, False), (8, True), (10, True)])
def test_due_at_multiples_of_the_interval_from_the_delay_on(t, due):
    assert is_due(t, evaluation_interval=2, delay_evaluation=5) is due


@pytest.mark.parametrize("t, due", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_interval_zero_means_every_report(t, due):
    assert is_due(t, evaluation_interval=0, delay_evaluation=3) is due  # the SDK's default 0


# --- bandit -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mine, stops", [(0.66, True), (0.667, False), (0.7, False)])
def test_bandit_docs_example_slack_factor(mine, stops):
    # Docs: best 0.8 at this interval, slack_factor 0.2 -> anything below 0.8 / 1.2 = 0.6667 is cut.
    assert bandit_stops([0.8, 0.7], [mine], 1, slack_factor=0.2) is stops


@pytest.mark.parametrize("mine, stops", [(0.69, True), (0.7, False), (0.75, False)])
def test_bandit_slack_amount_is_absolute_and_a_tie_continues(mine, stops):
    assert bandit_stops([0.8], [mine], 1, slack_amount=0.1) is stops


def test_bandit_judges_a_trial_by_its_best_value_so_far():
    # At interval 3 the trial dipped to 0.5, but it reached 0.75 at interval 2: within slack of 0.8.
    assert bandit_stops([0.8], [0.6, 0.75, 0.5], 3, slack_factor=0.2) is False
    assert bandit_stops([0.8], [0.6, 0.65, 0.5], 3, slack_factor=0.2) is True


def test_bandit_top_is_the_best_value_at_this_interval_including_mine():
    assert bandit_stops([], [0.1], 1, slack_factor=0.2) is False  # alone: I am the best
    assert bandit_stops([0.3, float("nan")], [0.9, 0.2], 2, slack_amount=0.05) is False  # best so far 0.9


def test_bandit_minimising_mirror():
    # Minimising: best 0.2, slack_factor 0.5 -> anything above 0.3 is cut.
    assert bandit_stops([0.2], [0.31], 1, slack_factor=0.5, maximize=False) is True
    assert bandit_stops([0.2], [0.29], 1, slack_factor=0.5, maximize=False) is False
    assert bandit_stops([0.2], [0.26], 1, slack_amount=0.05, maximize=False) is True


def test_bandit_needs_exactly_one_slack():
    with pytest.raises(ValueError):
        bandit_stops([0.8], [0.1], 1)


# --- median stopping ----------------------------------------------------------------------------------


PEERS = [[0.5, 0.6, 0.7], [0.8, 0.8, 0.8], [0.2, 0.3, 0.4]]  # running averages at t=3: 0.6, 0.8, 0.3


@pytest.mark.parametrize("mine, stops", [([0.4, 0.5, 0.59], True), ([0.4, 0.6, 0.5], False), ([0.7, 0.1, 0.1], False)])
def test_median_compares_my_best_with_the_median_of_running_averages(mine, stops):
    assert median_stops(PEERS, mine, 3) is stops


def test_median_uses_running_averages_not_current_values():
    # The peer is at 0.9 now but averages 0.3667 over intervals 1..3; my best 0.5 beats that.
    assert median_stops([[0.1, 0.1, 0.9]], [0.5, 0.5, 0.5], 3) is False
    assert median_stops([[0.1, 0.1, 0.9]], [0.3, 0.3, 0.3], 3) is True


def test_median_ignores_peers_that_did_not_reach_the_interval():
    assert median_stops([[0.9, 0.9], [0.1, 0.1, 0.1]], [0.2, 0.2, 0.2], 3) is False  # only the 0.1 peer counts
    assert median_stops([[0.9, 0.9]], [0.2, 0.2, 0.2], 3) is False  # no peer: continue


def test_median_minimising():
    assert median_stops([[0.2, 0.2], [0.4, 0.4]], [0.35, 0.31], 2, maximize=False) is True  # median 0.3
    assert median_stops([[0.2, 0.2], [0.4, 0.4]], [0.35, 0.29], 2, maximize=False) is False


# --- truncation selection -----------------------------------------------------------------------------


@pytest.mark.parametrize("mine, pct, stops", [
    (0.6, 25, True),    # 4 trials, cut floor(4 * 0.25) = 1: the worst one, me
    (0.75, 25, False),  # 0.7 is the worst
    (0.75, 50, True),   # cut 2: 0.7 and me
    (0.6, 20, False),   # floor(4 * 0.2) = 0: nobody is cut yet
])
def test_truncation_cuts_the_worst_share(mine, pct, stops):
    assert truncation_stops([0.9, 0.8, 0.7], mine, pct) is stops


def test_truncation_ties_rank_in_favour_of_the_current_trial():
    assert truncation_stops([0.6, 0.6, 0.6], 0.6, 50) is False
    assert truncation_stops([0.6, 0.6, 0.7], 0.5, 50) is True


def test_truncation_minimising():
    assert truncation_stops([0.1, 0.2, 0.3], 0.4, 25, maximize=False) is True
    assert truncation_stops([0.1, 0.2, 0.3], 0.25, 25, maximize=False) is False


# --- the Optuna pruners on a study --------------------------------------------------------------------


def _study(peers, states=None):
    """A study holding hand-made peers: each a list of values for intervals 1, 2, ..."""
    study = optuna.create_study(direction="maximize")
    states = states or [TrialState.COMPLETE] * len(peers)
    for history, state in zip(peers, states):
        values = {step: v for step, v in enumerate(history, 1)}
        study.add_trial(create_trial(state=state, value=history[-1] if state == TrialState.COMPLETE else None,
                                     intermediate_values=values))
    return study


def _mine(history):
    return create_trial(state=TrialState.RUNNING, intermediate_values=dict(enumerate(history, 1)))


GOOD = [0.9] * 8
BAD = [0.1] * 8


SCHEDULED = {
    "bandit": lambda: BanditPruner(slack_factor=0.2, evaluation_interval=2, delay_evaluation=3, min_peers=2),
    "median": lambda: MedianStoppingPruner(evaluation_interval=2, delay_evaluation=3, min_peers=2),
    "truncation": lambda: TruncationSelectionPruner(truncation_percentage=34, evaluation_interval=2,
                                                    delay_evaluation=3, min_peers=2),
}


@pytest.mark.parametrize("policy", SCHEDULED)
@pytest.mark.parametrize("t, stops", [(1, False), (2, False), (3, False), (4, True), (5, False), (6, True), (8, True)])
def test_pruners_act_only_at_interval_multiples_from_the_delay(policy, t, stops):
    # A poor trial among two good ones: every policy stops it, but only when it is due
    # (interval 2, delay 3: at 4, 6, 8). Truncation at 34 % of 3 trials cuts one.
    assert SCHEDULED[policy]().prune(_study([GOOD, GOOD]), _mine(BAD[:t])) is stops


@pytest.mark.parametrize("policy", SCHEDULED)
def test_pruners_let_a_good_trial_continue_when_due(policy):
    assert SCHEDULED[policy]().prune(_study([BAD, GOOD]), _mine([0.95] * 4)) is False


def test_pruners_wait_for_the_minimum_number_of_peers():
    for pruner in (BanditPruner(slack_amount=0.1), MedianStoppingPruner(), TruncationSelectionPruner(truncation_percentage=50)):
        assert pruner.min_peers == 3
        assert pruner.prune(_study([GOOD, GOOD]), _mine(BAD[:2])) is False
        assert pruner.prune(_study([GOOD, GOOD, GOOD]), _mine(BAD[:2])) is True


def test_peers_are_running_completed_and_cancelled_trials_not_failed_ones():
    states = [TrialState.RUNNING, TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    study = _study([GOOD, GOOD, GOOD, GOOD], states)
    assert BanditPruner(slack_amount=0.1, min_peers=3).prune(study, _mine(BAD[:1])) is True
    assert BanditPruner(slack_amount=0.1, min_peers=4).prune(study, _mine(BAD[:1])) is False  # the failed one is no peer


def test_peers_must_have_reached_the_interval():
    study = _study([GOOD[:2], GOOD[:2], GOOD[:5]])
    pruner = MedianStoppingPruner(min_peers=2)
    assert pruner.prune(study, _mine(BAD[:2])) is True
    assert pruner.prune(study, _mine(BAD[:3])) is False  # at interval 3 only one peer is there


def test_median_pruner_default_delay_zero_acts_from_the_first_interval():
    study = _study([[0.5, 0.6], [0.7, 0.7], [0.4, 0.5]])
    assert MedianStoppingPruner().prune(study, _mine([0.45])) is True   # median of 0.5, 0.7, 0.4 is 0.5
    assert MedianStoppingPruner().prune(study, _mine([0.55])) is False
    assert MedianStoppingPruner(delay_evaluation=2).prune(study, _mine([0.45])) is False


def test_truncation_can_leave_finished_trials_out():
    states = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING]
    study = _study([GOOD, GOOD, [0.05] * 3, [0.02] * 3], states)
    # Five trials, cut floor(5 * 0.6) = 3: 0.02, 0.05 and mine (0.1).
    assert TruncationSelectionPruner(truncation_percentage=60).prune(study, _mine([0.1] * 3)) is True
    # Among the running trials only (0.05, 0.02 and mine) the cut is floor(3 * 0.6) = 1: 0.02.
    assert TruncationSelectionPruner(truncation_percentage=60, exclude_finished_jobs=True,
                                     min_peers=2).prune(study, _mine([0.1] * 3)) is False


def test_pruner_inside_optuna_report_and_should_prune():
    study = _study([GOOD, GOOD, GOOD])
    study.pruner = BanditPruner(slack_factor=0.1, delay_evaluation=2)
    trial = study.ask()
    trial.report(0.5, 1)
    assert trial.should_prune() is False  # before the delay
    trial.report(0.5, 2)
    assert trial.should_prune() is True


# --- the job's early_termination block ------------------------------------------------------------------


def test_parse_policy_reads_each_type():
    spec, problems = parse_policy({"type": "bandit", "slack_factor": 0.15, "evaluation_interval": 1,
                                   "delay_evaluation": 5})
    assert not problems and spec == PolicySpec("bandit", 1, 5, slack_factor=0.15)
    spec, _ = parse_policy({"type": "Median_Stopping", "evaluation_interval": 0})
    assert spec.type == "median_stopping" and spec.evaluation_interval == 1
    spec, _ = parse_policy({"type": "truncation_selection", "truncation_percentage": 25, "evaluation_interval": 2,
                            "delay_evaluation": 4, "exclude_finished_jobs": True, "min_peers": 1})
    pruner = make_pruner(spec.to_dict())
    assert isinstance(pruner, TruncationSelectionPruner)
    assert (pruner.truncation_percentage, pruner.evaluation_interval, pruner.delay_evaluation,
            pruner.exclude_finished_jobs, pruner.min_peers) == (25, 2, 4, True, 1)
    assert parse_policy(None) == (None, [])


@pytest.mark.parametrize("raw, fragments", [
    ({"type": "bandit"}, ["exactly one of slack_factor"]),
    ({"type": "bandit", "slack_factor": 0.1, "slack_amount": 0.1}, ["exactly one of slack_factor"]),
    ({"type": "bandit", "slack_factor": -1}, ["slack_factor: must be a number > 0"]),
    ({"type": "truncation_selection"}, ["truncation_percentage: required"]),
    ({"type": "truncation_selection", "truncation_percentage": 100}, ["from 1 to 99"]),
    ({"type": "median_stopping", "slack_factor": 0.1, "delay_evaluation": -1},
     ["slack_factor: not a setting of median_stopping", "delay_evaluation: must be a whole number >= 0"]),
    ({"type": "hyperband"}, ["allowed: bandit, median_stopping, truncation_selection"]),
])
def test_parse_policy_lists_every_problem(raw, fragments):
    spec, problems = parse_policy(raw)
    assert spec is None
    for fragment in fragments:
        assert any(fragment in p for p in problems), problems


def test_pruner_constructors_check_their_parameters():
    with pytest.raises(SettingsError) as error:
        TruncationSelectionPruner(truncation_percentage=0, evaluation_interval=1.5)
    assert len(error.value.problems) == 2
    assert math.isclose(BanditPruner(slack_factor=1).slack_factor, 1.0)
