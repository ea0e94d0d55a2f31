"""The check of a search space against the schema, applied to every value a trial can draw before
any trial runs.

The schema's checks are those of a single run (``visionsweep.settings``); this module decides which
values to put to them (a middle value of every distribution, then each distribution's edge values)
and whether a rejection stops the job (a problem) or only fails the trials that draw it (a note).
"""
from __future__ import annotations

from typing import Any, Mapping

from visionsweep.settings import canonical_key, merge_settings
from visionsweep.settings.partial import (
    cast_value, check_setting_names, known_settings, problem_is_about, settings_problems,
)
from visionsweep.sweep.distributions import NORMAL_FAMILY
from visionsweep.sweep.space import SearchSpace
from visionsweep.tasks import Task, parse_task


def check_space(task: Task | str, base: Mapping[str, Any], space: SearchSpace) -> tuple[list[str], list[str]]:
    """Check a search space against the schema before any trial runs.

    For each sub-space and each model it may pick, the fixed values plus a middle value of every
    distribution are resolved; then each distribution's edge values (every choice, both ends of a
    range) are tried one key at a time. A value the schema rejects on its own (out of range, wrong
    type, not an allowed name) is a problem. A rule between several keys that some draws break
    (a ViT's train and valid crop sizes) is only a note: those trials fail validation and are
    recorded failed, the others run. The normal family is unbounded, so a rejected 0.1 %/99.9 %
    quantile is a note too. ``base`` holds the shared settings as ``check_base_settings`` leaves
    them. Returns (problems, notes).
    """
    task = parse_task(task)
    problems: list[str] = []
    notes: list[str] = []
    for index, sub in enumerate(space.subspaces):
        here = f"search_space[{index}]"
        name_problems, name_notes = check_setting_names(task, sub.keys(), here)
        problems.extend(name_problems)
        notes.extend(name_notes)
        # A misspelt key is reported above; the sub-space's other keys are still checked, so that
        # one pass over the job finds every problem.
        fixed = merge_settings(base, known_settings(task, sub.fixed))
        distributions = known_settings(task, sub.distributions)
        model_dist = next((d for k, d in distributions.items() if canonical_key(k) == "model_name"), None)
        models = list(model_dist.values) if model_dist else [fixed.get("model_name", task.default_model)]
        others = {k: d for k, d in distributions.items() if canonical_key(k) != "model_name"}
        own_keys = {*fixed, "model_name"}
        sampled_keys = {canonical_key(k) for k in others}
        for model in models:
            probe = merge_settings(fixed, {k: cast_value(k, d.representative()) for k, d in others.items()},
                                   {"model_name": model})
            label = f"{here} with model_name {model}"
            base_problems = settings_problems(task, probe)
            for p in base_problems:
                if problem_is_about(p, own_keys):
                    problems.append(f"{label}: {p}")
                elif not problem_is_about(p, sampled_keys):  # sampled keys are reported at their edge values below
                    notes.append(f"{label}: some draws break a rule and will be recorded failed: {p}")
            rejected = {key for key in own_keys if any(problem_is_about(p, {key}) for p in base_problems)}
            if "model_name" in rejected:
                continue  # not a model of the task: nothing else can be checked against it
            if rejected:
                # The fixed values reported above are left out, and the distributions checked without them.
                probe = {k: v for k, v in probe.items() if k not in rejected}
                base_problems = settings_problems(task, probe)
            for key, dist in others.items():
                for value in dist.extremes():
                    value = cast_value(key, value)
                    for p in settings_problems(task, merge_settings(probe, {key: value})):
                        line = f"{label}: {key}={value!r} (from {dist.describe()}) is rejected: {p}"
                        if problem_is_about(p, {canonical_key(key)}):
                            if dist.kind in NORMAL_FAMILY:
                                notes.append(f"{line}; such trials will be recorded failed")
                            else:
                                problems.append(line)
                        elif p not in base_problems and not problem_is_about(p, sampled_keys):
                            notes.append(f"{line}; such trials will be recorded failed")
    return list(dict.fromkeys(problems)), list(dict.fromkeys(notes))
