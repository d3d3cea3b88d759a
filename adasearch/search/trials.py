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
from adasearch.metrics import HARDWARE_METRICS, relative_miss
from adasearch.spec import RunSpec

TIMED, PREDICTED, RETIMED = "timed", "predicted", "re-timed"  # where a trial's timed figures come from


@dataclass
class TrialRecord:
    number: int
    config: DeploymentConfig
    params: dict
    metrics: dict
    feasible: bool
    violations: dict  # metric -> amount outside its bound (> 0)
    measured_on: str = "local"  # "local", or the Ray node id that measured it
    timing: str = TIMED  # TIMED (per trial), PREDICTED (engine: model, not re-timed yet) or RETIMED


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


CONSTRAINTS = "constraints"  # Optuna's system attr: one value per constraint, <= 0 feasible
UNMEASURED = 1e300  # a constraint whose metric was never measured cannot be shown to hold (JSON has no inf)


def constraint_list(spec: RunSpec, metrics: dict) -> list:
    """Constraint values in the order of spec.constraints, in the list form Optuna's samplers and
    optuna-dashboard both read (trial.set_constraint's per-name form is invisible to the dashboard)."""
    values = constraint_values(spec, metrics)
    return [values.get(name, UNMEASURED) for name in spec.constraints]


def objective_values(spec: RunSpec, metrics: dict) -> list:
    return [metrics[o.metric] for o in spec.objectives]


def attach(trial, measured, hardware: Optional[str]) -> None:
    """Store config, key, metrics, where and on which hardware it was measured on a live or frozen
    Optuna trial. `measured` is a context.Measured; constraints go in when the trial is created or told."""
    trial.set_user_attr("config", measured.config.to_dict())
    trial.set_user_attr("key", measured.key)
    trial.set_user_attr("metrics", measured.metrics)
    trial.set_user_attr("measured_on", measured.measured_on)
    trial.set_user_attr("timing", measured.timing)
    if hardware is not None:
        trial.set_user_attr("hardware", hardware)


def current_hardware(study) -> Optional[str]:
    """The hardware fingerprint the run's timed figures belong to now (context.adopt_fingerprint)."""
    return (study.user_attrs.get("fingerprint") or {}).get("hardware")


def stored_metrics(trial, hardware: Optional[str]) -> dict:
    """A stored trial's metrics, without the hardware-dependent ones when it was timed on other
    hardware than the run's now: those are re-measured, never reused."""
    metrics = dict(trial.user_attrs["metrics"])
    timed_on = trial.user_attrs.get("hardware")
    if hardware is not None and timed_on is not None and timed_on != hardware:
        metrics = {k: v for k, v in metrics.items() if k not in HARDWARE_METRICS}
    return metrics


RETIMED_FIGURES = "final_metrics"  # the study's attribute: {trial number as str: that trial's re-timed metrics}


def retimed_figures(study) -> dict:
    """The re-timed figures stored in the study (finalists.retime_finalists writes them), a copy: {trial number
    as str: its metrics from the interleaved re-timing, with the rounds behind them}; {} before any re-timing."""
    return dict(study.user_attrs.get(RETIMED_FIGURES, {}))


def store_retimed(study, figures: dict) -> None:
    """Store the re-timed figures whole (retimed_figures' form), replacing what was stored."""
    study.set_user_attr(RETIMED_FIGURES, figures)


def records(study, spec: RunSpec, final: Optional[dict] = None) -> list:
    """Completed trials as TrialRecords; `final` (retimed_figures' form) overrides their figures with re-timed ones.
    A trial whose objectives were timed on other hardware is left out: its config is measured again."""
    from optuna.trial import TrialState

    out = []
    hardware = current_hardware(study)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    # Re-timed figures belong to the config, not the trial: a sampler can propose one config twice,
    # and each copy re-timed on its own would let the luckier timing win (best-of-N).
    final_by_key = {}
    for t in trials:
        if final and str(t.number) in final:
            final_by_key.setdefault(t.user_attrs.get("key", t.number), final[str(t.number)])
    for t in trials:
        metrics = stored_metrics(t, hardware)
        retimed = final_by_key.get(t.user_attrs.get("key", t.number))
        metrics.update(retimed or {})
        if any(metrics.get(o.metric) is None for o in spec.objectives):
            continue
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
                RETIMED if retimed else t.user_attrs.get("timing", TIMED),
            )
        )
    return out


def measured_keys(study) -> tuple:
    """({canonical key: metrics}, {keys whose timed figures are predictions}) of the trials already in
    the storage (for resumption and dedup). Of several trials of one network: a timed one before a
    predicted one, then the one with the most figures (a re-measurement on new hardware)."""
    from optuna.trial import TrialState

    hardware = current_hardware(study)
    out: dict = {}
    rank: dict = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "key" in t.user_attrs and "metrics" in t.user_attrs:
            key, metrics = t.user_attrs["key"], stored_metrics(t, hardware)
            this = (t.user_attrs.get("timing", TIMED) == TIMED, len(metrics))
            if key not in rank or this >= rank[key]:
                out[key], rank[key] = metrics, this
    return out, {key for key, (timed, _) in rank.items() if not timed}


def config_key(config: DeploymentConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)
