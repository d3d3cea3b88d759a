"""How a trial is stored in the study and read back: user attributes, constraints, feasibility.

Every trial of a run lives in one Optuna study (SQLite in the results folder by default), with the
config, the metrics, the constraint values (through set_constraint, so Optuna's samplers see them),
the canonical key and where it was measured. context.record_trial writes them through `attach`;
`records` reads them back as TrialRecords for the Pareto set, resumption and the results folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

from adasearch.config import DeploymentConfig
from adasearch.metrics import relative_miss
from adasearch.spec import RunSpec


@dataclass
class TrialRecord:
    number: int
    config: DeploymentConfig
    params: dict
    metrics: dict
    feasible: bool
    violations: dict  # metric -> amount outside its bound (> 0)
    measured_on: str = "local"  # "local", or the Ray node id that measured it


def constraint_values(spec: RunSpec, metrics: dict) -> dict:
    """Optuna's convention: <= 0 is feasible. One value per constrained metric."""
    out = {}
    for name, bound in spec.constraints.items():
        v = metrics.get(name)
        if v is None:
            continue
        sides = [bound.min - v] if bound.min is not None else []
        sides += [v - bound.max] if bound.max is not None else []
        out[name] = max(sides)
    return out


def violations(spec: RunSpec, metrics: dict) -> dict:
    """How far each constrained metric lies outside its bound (only the violated ones). A constrained
    metric that was never measured (a trial stored before the constraint was added) counts as
    violated by inf: it cannot be shown to hold."""
    out = {k: v for k, v in constraint_values(spec, metrics).items() if v > 0}
    out.update({k: math.inf for k in spec.constraints if metrics.get(k) is None})
    return out


def relative_violation(spec: RunSpec, record) -> float:
    """Summed violations, each relative to the bound it broke (0 when feasible)."""

    def bound(k: str) -> float:
        b, value = spec.constraints[k], record.metrics.get(k)
        return b.min if b.min is not None and value is not None and value < b.min else b.max

    return sum(relative_miss(v, bound(k)) for k, v in record.violations.items())


def objective_values(spec: RunSpec, metrics: dict) -> list:
    return [metrics[o.metric] for o in spec.objectives]


def attach(trial, spec: RunSpec, measured) -> None:
    """Store config, key, metrics, where it was measured and the constraints on a live or frozen
    Optuna trial. `measured` is a context.Measured."""
    trial.set_user_attr("config", measured.config.to_dict())
    trial.set_user_attr("key", measured.key)
    trial.set_user_attr("metrics", measured.metrics)
    trial.set_user_attr("measured_on", measured.measured_on)
    for name, value in constraint_values(spec, measured.metrics).items():
        trial.set_constraint(name, value)


def records(study, spec: RunSpec, final: Optional[dict] = None) -> list:
    """Completed trials as TrialRecords; `final` (trial number -> metrics) overrides re-timed metrics."""
    from optuna.trial import TrialState

    out = []
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    # Re-timed figures belong to the config, not the trial: a sampler can propose one config twice,
    # and each copy re-timed on its own would let the luckier timing win (best-of-N).
    final_by_key = {}
    for t in trials:
        if final and str(t.number) in final:
            final_by_key.setdefault(t.user_attrs.get("key", t.number), final[str(t.number)])
    for t in trials:
        metrics = dict(t.user_attrs["metrics"])
        metrics.update(final_by_key.get(t.user_attrs.get("key", t.number), {}))
        viol = violations(spec, metrics)
        out.append(
            TrialRecord(
                t.number,
                DeploymentConfig.from_dict(t.user_attrs["config"]),
                dict(t.params),
                metrics,
                not viol,
                viol,
                t.user_attrs.get("measured_on", "local"),
            )
        )
    return out


def measured_keys(study) -> dict:
    """canonical key -> metrics of trials already in the storage (for resumption and dedup)."""
    from optuna.trial import TrialState

    return {
        t.user_attrs["key"]: t.user_attrs["metrics"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "key" in t.user_attrs
    }


def config_key(config: DeploymentConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)
