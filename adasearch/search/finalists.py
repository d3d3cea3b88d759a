"""Finalists: which trials are re-timed with the longer budget, and the re-timing itself.

Brief per-trial timings are noisy (sub-millisecond demo configs especially), so a config can be
pushed on or off the front by noise alone. The candidates (the front, the next non-dominated layer,
and near misses of timed constraints) are timed again, interleaved (measure/interleaved.py: shuffled
round-robin rounds, search.final_latency_budget_s each, 95 % bootstrap intervals), and the front is
recomputed from those figures, with noise ties broken by results.noise_ties. The re-timed figures are
stored in the study's `final_metrics` attribute, keyed by trial number, so a later run (or an interrupted
one) keeps them.
"""

from __future__ import annotations

from adasearch.metrics import COMPUTE, REGISTRY, TIMED_METRICS
from adasearch.search import trials
from adasearch.search.context import RunContext
from adasearch.search.pareto import dominates, pareto_front
from adasearch.search.results import front_of
from adasearch.spec import RunSpec


def candidates(recs: list, spec: RunSpec) -> list:
    """The trials worth re-timing: the front, and when latency is measured, also the next
    non-dominated layer (at most twice the front's size), since a trial can be pushed off the front
    by timing noise alone, and the front with each timed objective replaced by MACs: a set that brief
    timings cannot change, so the configs most likely to be fastest are re-timed on every run."""
    directions = [o.direction for o in spec.objectives]
    first: dict = {}
    for r in recs:  # one trial per config (samplers can repeat one): the first, so it is timed once
        first.setdefault(r.config, r)
    recs = list(first.values())
    remaining = [r for r in recs if r.feasible] or list(recs)
    chosen: list = []
    for layer in range(2 if spec.needs_latency else 1):
        idx = pareto_front([trials.objective_values(spec, r.metrics) for r in remaining], directions)
        picked = [remaining[i] for i in idx][: max(1, 2 * len(chosen)) if layer else None]
        chosen += picked
        remaining = [r for r in remaining if r not in picked]
        if not remaining:
            break
    if spec.needs_latency:
        chosen += [r for r in proxy_front(recs, spec) if r not in chosen]
        chosen += near_misses(recs, spec, chosen, limit=len(chosen))
    return chosen


def proxy_front(recs: list, spec: RunSpec) -> list:
    """Non-dominated records with every timed objective replaced by MACs (the deterministic proxy of
    time), among those that meet every constraint that is not timed."""
    objectives = [
        (COMPUTE, "minimize") if REGISTRY[o.metric].timed else (o.metric, o.direction) for o in spec.objectives
    ]
    if all(name != COMPUTE for name, _ in objectives):
        return []
    names = list(dict.fromkeys(name for name, _ in objectives))
    directions = [dict(objectives)[n] for n in names]
    ok = [r for r in recs if r.metrics.get(COMPUTE) is not None and not set(r.violations) - TIMED_METRICS]
    return [ok[i] for i in pareto_front([[r.metrics[n] for n in names] for r in ok], directions)]


def near_misses(recs: list, spec: RunSpec, chosen: list, limit: int) -> list:
    """Trials that broke only timed constraints (a noisy brief timing can do that) and would be on the
    front if they met them: the `limit` closest to their bounds. Memory is not a timing: a config over
    a memory bound stays over it."""
    directions = [o.direction for o in spec.objectives]
    front = [trials.objective_values(spec, r.metrics) for r in chosen if r.feasible]
    misses = [
        r
        for r in recs
        if not r.feasible
        and r not in chosen
        and set(r.violations) <= TIMED_METRICS
        and not any(dominates(f, trials.objective_values(spec, r.metrics), directions) for f in front)
    ]
    return sorted(misses, key=lambda r: trials.relative_violation(spec, r))[:limit]


def retime_finalists(ctx: RunContext, recs: list) -> dict:
    """Time every Pareto candidate again, interleaved and with a longer budget; store it in the study.

    Re-timing can move the front: when candidates come out slower, a trial that was never re-timed
    may become non-dominated. Such trials are re-timed too, until every config on the final front
    carries the longer timing (each round adds at least one, so this ends). Each round's figures are
    stored as soon as they are taken."""
    evaluator = ctx.measurer.evaluator
    final = dict(ctx.study.user_attrs.get("final_metrics", {}))
    retimed: set = set()
    todo = candidates(recs, ctx.spec)
    while todo:
        # Interleaved: the candidates share every moment's load instead of each getting its own window.
        # The latency model's reference configs (engine: model) share the rounds too: they re-take its
        # calibration at this moment, and the finalists' predictions are made again with it.
        timer = ctx.retimer or evaluator.time_interleaved
        configs = [r.config for r in todo] + list(ctx.anchors)
        timed = timer(configs, ctx.spec.search.final_latency_budget_s, seed=ctx.spec.search.seed)
        predict = ctx.reanchor({a: timed[a] for a in ctx.anchors}) if ctx.anchors else None
        for r in todo:
            final[str(r.number)] = {**r.metrics, **timed[r.config], **(predict(r.config) if predict else {})}
            retimed.add(r.number)
        ctx.study.set_user_attr("final_metrics", final)  # an interrupted round of re-timing keeps what it did
        todo = [r for r in front_of(trials.records(ctx.study, ctx.spec, final), ctx.spec) if r.number not in retimed]
    ctx.study.set_user_attr("final_metrics", final)
    return final
