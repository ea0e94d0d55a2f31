"""From a job to what the runner executes: search space, sampling, policy, budget, assigned points."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from visionsweep.sweep.automode import Hardware, plan_automode
from visionsweep.sweep.job import Job
from visionsweep.sweep.policies import PolicySpec
from visionsweep.sweep.sampling import SamplingSpec, assigned_points, budget_for
from visionsweep.sweep.space import SearchSpace, parse_search_space


@dataclass(frozen=True)
class SweepPlan:
    """What every worker of one sweep must agree on; the first worker stores it in the study.

    ``points[k]`` (raw Optuna parameters) is what the trial in slot k draws, for k < len(points):
    the grid in grid mode, the default configurations in AutoMode, nothing otherwise.
    """

    mode: str
    space: SearchSpace
    sampling: SamplingSpec
    policy: PolicySpec | None
    budget: int
    points: tuple[dict[str, Any], ...] = ()
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "space": self.space.to_raw(), "sampling": self.sampling.to_dict(),
                "policy": self.policy.to_dict() if self.policy else None, "budget": self.budget,
                "points": [dict(p) for p in self.points], "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepPlan":
        space, problems = parse_search_space(data["space"])
        if problems:
            raise ValueError(f"stored sweep plan does not parse: {problems}")
        policy = PolicySpec(**data["policy"]) if data.get("policy") else None
        return cls(data["mode"], space, SamplingSpec(**data["sampling"]), policy, int(data["budget"]),
                   tuple(dict(p) for p in data.get("points", ())), tuple(data.get("reasons", ())))

    def describe(self) -> str:
        policy = self.policy.describe() if self.policy else "none"
        return (f"mode {self.mode}, {self.budget} trial(s), sampling {self.sampling.describe()}, "
                f"early termination {policy}, {len(self.space.subspaces)} sub-space(s)")


def plan_sweep(job: Job, hardware: Hardware | None = None) -> SweepPlan:
    """The plan for ``job``. ``hardware`` is only consulted in AutoMode (detected when None)."""
    if job.mode == "single":
        return SweepPlan("single", SearchSpace(), SamplingSpec("random"), None, 1,
                         reasons=("max_trials 1 and no search space: one trial with training_parameters",))
    if job.mode == "automode":
        auto = plan_automode(job.task, job.limits.max_trials, hardware or Hardware.detect(), job.training_parameters)
        return SweepPlan("automode", auto.space, auto.sampling, auto.policy, job.limits.max_trials,
                         auto.portfolio, auto.reasons)
    assert job.search_space is not None and job.sampling is not None
    points = tuple(assigned_points(job.sampling, job.search_space))
    budget = budget_for(job.sampling, job.search_space, job.limits.max_trials)
    reasons = []
    if budget < job.limits.max_trials:
        reasons.append(f"grid of {budget} point(s) is smaller than max_trials {job.limits.max_trials}: "
                       f"{budget} trial(s)")
    elif job.sampling.algorithm == "grid" and len(points) > budget:
        reasons.append(f"grid of {len(points)} points capped at max_trials {budget}: a seeded random subset runs")
    return SweepPlan("sweep", job.search_space, job.sampling, job.early_termination, budget, points, tuple(reasons))
