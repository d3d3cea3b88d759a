"""Finalists: which trials are re-timed with the longer budget, and the re-timing itself.

Brief per-trial timings are noisy (sub-millisecond demo configs especially), so a config can be pushed
on or off the front by noise alone. The candidates (the front, the next non-dominated layer, and near
misses of timed constraints; of timing twins, only the best: fold_twins) are timed again, interleaved
(measure/interleaved.py: shuffled round-robin rounds, search.final_latency_budget_s each, 95 % bootstrap
intervals), and the front is recomputed from those figures, where timed objectives count only beyond
noise (pareto.front_of). The re-timed figures are stored in the study (trials.retimed_figures), keyed
by trial number, so a later run (or an interrupted one) keeps them; with them, under pareto.SESSIONS,
each config's figure in every round of every session (one call of the interleaved timer) it was timed
in, which is what the paired comparisons (measure/paired.py) read.

The re-timing races as it goes (as irace's F-race drops a candidate once a better one is separated from
it): at checks from an eighth of the way in on (interleaved.stop_checks), the configs that the front of the
rounds so far beats beyond noise on every timed objective (beyond_noise.beaten) are visited no more
(_stop_beaten), their figures scaled to the whole session (interleaved._to_whole_session); the notes say how
many stopped. Many candidates are re-timed to be sure (the front's next layer, the configs near it), and the
first rounds show most of them clearly off the front.

Racing the close calls (as irace's F-race and Maron & Moore's Hoeffding races spend measurement only on
candidates still undecided): when pairs whose timed order decides the front are neither separated nor
settled within the practical threshold (beyond_noise.close_calls), just those configs are timed again
together, in sessions of interleaved rounds (as many as measure/interleaved.rounds_for allows) at
RACE_VISIT of the re-timing's budget per config (the paired test counts rounds, not repetitions), until
every such pair is separated or settled, or the budget is spent: RACE_SESSIONS sessions, and at most
RACE_SHARE of the re-timing's budgeted time. Pairs still not separated then are equivalent
(beyond_noise.equivalents lists them), and the run's notes say how many pairs were raced and how many
stayed equivalent.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from adasearch.measure.interleaved import ROUND_FIGURES, STOPPED
from adasearch.metrics import COMPUTE, REGISTRY, TIMED_METRICS
from adasearch.search import trials
from adasearch.search.context import RunContext
from adasearch.search.front.beyond_noise import SESSIONS, beaten, front_of, race
from adasearch.search.front.pareto import dominates, pareto_front
from adasearch.search.phases import RACING
from adasearch.spec import RunSpec

RETIMING = "re-timing finalists"  # the progress line's description
NEAR = 0.15  # brief timings and predictions this close may swap order; also engine model's MISS, its tolerated error
RACE_SESSIONS = 3  # extra sessions of interleaved rounds for the close calls, at most
RACE_SHARE = 0.5  # of the re-timing's budgeted time (its configs x its budget each), at most, spent racing
RACE_VISIT = 0.5  # of the re-timing's budget per config, per config in a race: rounds, not repetitions, pair up


def candidates(recs: list, spec: RunSpec, trace=None) -> list:
    """The trials worth re-timing: the front, and when latency is measured, also the next
    non-dominated layer (at most twice the front's size), since a trial can be pushed off the front
    by timing noise alone, and the front with each timed objective replaced by MACs: a set that brief
    timings cannot change, so the configs most likely to be fastest are re-timed on every run; then the
    configs within NEAR of the front (near_front), which a timing or prediction error could put on it,
    so that which configs are re-timed does not turn on that error; and the near misses. trace (config ->
    Evaluator.timing_trace): when given, timing twins are folded first (fold_twins)."""
    directions = [o.direction for o in spec.objectives]
    first: dict = {}
    for r in recs:  # one trial per config (samplers can repeat one): the first, so it is timed once
        first.setdefault(r.config, r)
    recs = list(first.values())
    if trace is not None and spec.needs_latency:
        recs = fold_twins(recs, spec, trace)
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
        chosen += near_front(recs, spec, chosen, limit=len(chosen))
        chosen += near_misses(recs, spec, chosen, limit=len(chosen))
    return chosen


def fold_twins(recs: list, spec: RunSpec, trace) -> list:
    """recs without the timing twins of better ones. Twins run the same operations on the timing images
    (trace: config -> Evaluator.timing_trace, equal) and break the same untimed constraints, so their timed
    figures differ by noise alone: all 8 of the demo's timing images stop after block 1 under
    N8-wfull-d4-tau0.8, so N8-wfull-d2-, -d3-, -d5- and -dall-tau0.8 are its twins (tests/test_timing_trace.py;
    such configs of one
    accuracy were on the front three to seven at a time, as the noise separated them:
    bench/results/front_stability_exitcurve2.md). Timing them all spends the re-timing on that noise,
    and the front beyond noise would take the best of them anyway: one a twin beats on a deterministic
    objective and equals on the rest is dominated; among equals, the fewest MACs, then the first label,
    stand for the point (beyond_noise._one_per_point). So only those are kept."""
    fixed = [(o.metric, o.direction) for o in spec.objectives if not REGISTRY[o.metric].timed]
    groups: dict = {}
    for r in recs:
        ops = trace(r.config)
        ops = id(r) if ops is None else ops  # None: not known without a pass; a group of its own
        groups.setdefault((ops, frozenset(set(r.violations) - TIMED_METRICS)), []).append(r)
    directions = [d for _, d in fixed]
    kept: set = set()
    for members in groups.values():
        ranked = sorted(members, key=lambda r: (r.metrics.get(COMPUTE, math.inf), r.config.label()))
        values = [[r.metrics[m] for m, _ in fixed] for r in ranked]
        for i, v in enumerate(values):  # kept unless a twin dominates it, or equals it and ranks before it
            if not any(dominates(w, v, directions) or (w == v and j < i) for j, w in enumerate(values)):
                kept.add(id(ranked[i]))
    return [r for r in recs if id(r) in kept]


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


def near_front(recs: list, spec: RunSpec, chosen: list, limit: int) -> list:
    """Feasible records not chosen yet that no record beats by more than NEAR on every timed objective
    while no worse on the others: an error of NEAR in a brief timing or a prediction could put them on
    the front. The `limit` closest to it first (by the largest margin any record beats them by)."""
    objectives = spec.objectives
    timed = [i for i, o in enumerate(objectives) if REGISTRY[o.metric].timed]
    fixed = [i for i in range(len(objectives)) if i not in timed]
    feasible = [r for r in recs if r.feasible]
    if not timed or not feasible:
        return []
    values = np.array([trials.objective_values(spec, r.metrics) for r in feasible], dtype=float)
    values[:, timed] = np.log(values[:, timed])  # a margin is then a ratio, whatever the figure's scale
    values *= [-1.0 if o.direction == "maximize" else 1.0 for o in objectives]  # smaller is better everywhere
    taken = {id(r) for r in chosen}
    near = []
    for x, r in enumerate(feasible):
        if id(r) in taken:
            continue
        rivals = np.all(values[:, fixed] <= values[x, fixed], axis=1)
        rivals[x] = False
        # how far each rival beats x on every timed objective (a log-ratio); x is near when none beats it by more
        beaten = np.min(values[x, timed] - values[rivals][:, timed], axis=1)
        margin = float(beaten.max()) if beaten.size else -math.inf
        if margin <= math.log(1 + NEAR):
            near.append((margin, r.config.label(), r))
    return [r for *_, r in sorted(near, key=lambda t: t[:2])][:limit]


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


def retime_finalists(ctx: RunContext, recs: list, only_new: bool = False) -> dict:
    """Time every Pareto candidate again, interleaved and with a longer budget; store it in the study;
    then race the close calls.

    Re-timing can move the front: when candidates come out slower, a trial that was never re-timed
    may become non-dominated. Such trials are re-timed too, until every config on the final front
    carries the longer timing (each round adds at least one, so this ends). Each round's figures are
    stored as soon as they are taken.

    only_new (engine: model's fallback rounds, which add a few configs to candidates re-timed minutes
    before): every record not re-timed yet gets figures (one per config), whatever its predicted figures
    say, since the engine proposed it because it doubts them; the re-timed front is timed in the same
    rounds, and those rounds are added to its records as a race's are (their figures stay), so that every
    new config pairs with every front config. Re-timing every candidate again made each fallback round
    cost about as much as the first re-timing. Its race takes only the close calls with a config it re-timed:
    the others were raced to their end before, and racing them again in each round was most of its time."""
    budget_s = ctx.spec.search.final_latency_budget_s
    final = trials.retimed_figures(ctx.study)
    retimed: set = {int(k) for k in final} if only_new else set()
    spent_s, raced = 0.0, False
    if only_new:  # what the engine proposed to measure, whatever its predicted figures: it doubts them
        todo = list({r.config: r for r in sorted(recs, key=lambda r: -r.number) if r.number not in retimed}.values())
    else:
        todo = candidates(recs, ctx.spec, ctx.measurer.evaluator.timing_trace)
    companions = [r for r in front_of(recs, ctx.spec) if r.number in retimed] if only_new else []
    new_keys: set = set()  # configs first re-timed by this call
    stopped: list = []  # the share of its session's rounds each config stopped early was timed in
    while todo:
        ctx.status(RETIMING, len(retimed), len(retimed) + len(todo))
        # Interleaved: the candidates share every moment's load instead of each getting its own window.
        # The latency model's reference configs (engine: model) share the rounds too: they re-take its
        # calibration at this moment, and the finalists' predictions are made again with it.
        configs = list(dict.fromkeys([r.config for r in todo + companions] + list(ctx.anchors)))
        session, timed = _timed_session(ctx, configs, budget_s, final, todo + companions)
        spent_s += budget_s * len(configs)  # as budgeted: the races keep their share when configs stop early
        stopped += [_visited_share(timed[r.config]) for r in todo if STOPPED in timed[r.config]]
        predict = ctx.reanchor({a: timed[a] for a in ctx.anchors}) if ctx.anchors else None
        for r in companions:
            entry = final[str(r.number)]
            final[str(r.number)] = {
                **entry,
                SESSIONS: {**entry.get(SESSIONS, {}), session: timed[r.config][ROUND_FIGURES]},
            }
        companions = []
        for r in todo:
            rounds = timed[r.config].pop(ROUND_FIGURES)
            # A fresh re-timing replaces the figures and the rounds behind them: they belong together.
            final[str(r.number)] = {**r.metrics, **timed[r.config], **(predict(r.config) if predict else {}),
                                    SESSIONS: {session: rounds}}  # fmt: skip
            retimed.add(r.number)
            new_keys.add(trials.config_key(r.config))
        trials.store_retimed(ctx.study, final)  # an interrupted round of re-timing keeps what it did
        todo = [r for r in front_of(trials.records(ctx.study, ctx.spec, final), ctx.spec) if r.number not in retimed]
        if not todo and retimed and spent_s and not raced:
            raced = True
            # A fallback round races only the pairs its configs are in: the others were raced before.
            among = new_keys if only_new else None
            with ctx.phases.phase(RACING):  # racing can move the front: re-time who joins it
                race_close_calls(ctx, final, RACE_SHARE * spent_s, among)
            front = front_of(trials.records(ctx.study, ctx.spec, final), ctx.spec)
            todo = [r for r in front if r.number not in retimed]
    trials.store_retimed(ctx.study, final)
    ctx.status(RETIMING, len(retimed), len(retimed))
    if stopped:
        ctx.notes.append(
            f"re-timing: {len(stopped)} of {len(retimed)} configs stopped early, beaten beyond noise by a front "
            f"config (after {min(stopped):.0%}-{max(stopped):.0%} of their session's rounds)"
        )
    return final


def _timed_session(ctx: RunContext, configs: list, budget_s: float, final: dict, among: list = ()) -> tuple:
    """(session id, {config: figures}) of one call of the interleaved timer; ids count up over the study.
    The records `among` (of configs in the session) race as they are timed: at the timer's checks, those
    beaten beyond noise by the front of their rounds so far (beyond_noise.beaten) are visited no more
    (_stop_beaten). A cluster's timer (ctx.retimer) runs on another node and times every round."""
    seen = [int(s) for entry in final.values() for s in entry.get(SESSIONS, {})]
    session = max(seen, default=0) + 1
    # Each session its own seed: its rounds visit the configs in other orders than the earlier ones'.
    seed = ctx.spec.search.seed + session - 1
    if ctx.retimer:
        return str(session), ctx.retimer(configs, budget_s, seed=seed)
    timed_objective = any(REGISTRY[o.metric].timed for o in ctx.spec.objectives)
    # Only a timed objective can beat a config beyond noise: with timed constraints alone, every round counts.
    stop = _stop_beaten(ctx.spec, list(among), str(session)) if among and timed_objective else None
    return str(session), ctx.measurer.evaluator.time_interleaved(configs, budget_s, seed=seed, stop=stop)


def _stop_beaten(spec: RunSpec, among: list, session: str):
    """The interleaved timer's stop for a session that times the records `among`: the configs that the front
    of their rounds so far beats beyond noise, paired, on every timed objective (beyond_noise.beaten), so more
    rounds cannot bring them back, as an F-race drops a candidate once a better one is separated from it. The
    rest (the front, the close calls, any config not in among: the latency model's anchors) are timed every
    round. A record's point figures, for the front's order, are its rounds' medians so far.

    tests/test_front_simulation.py runs it on a simulated noisy machine and prints the front's stability with
    it and with every config timed every round (about two thirds of the visits with it)."""
    by_config = {r.config: r for r in among}
    timed = [o.metric for o in spec.objectives if REGISTRY[o.metric].timed]

    def stop(rounds_done: int, figures: dict) -> list:
        partial = []
        for config, rounds in figures.items():
            r = by_config.get(config)
            if r is None or all(x is None for x in rounds[timed[0]]):
                continue
            points = {m: float(np.median([x for x in rounds[m] if x is not None])) for m in timed}
            sessions = {**r.metrics.get(SESSIONS, {}), session: rounds}
            partial.append(dataclasses.replace(r, metrics={**r.metrics, **points, SESSIONS: sessions}))
        return [r.config for r in beaten(partial, spec)]

    return stop


def _visited_share(figures: dict) -> float:
    """The share of its session's rounds a config was visited in: under 1 when the timer stopped it early."""
    done, rounds = figures.get(STOPPED, (1, 1))
    return done / rounds


def race_close_calls(ctx: RunContext, final: dict, budget_s: float, among: set | None = None) -> None:
    """pareto.race on the run's records: each session times the close calls' configs (as many as fit) at
    RACE_VISIT of the re-timing's budget per config, while budget_s lasts; the rounds are stored with
    every re-timed trial of those configs. among: config keys; only pairs with one of them are raced
    (None: every close call). A note says how many pairs were raced and how many stayed equivalent."""
    spec, per_config = ctx.spec, RACE_VISIT * ctx.spec.search.final_latency_budget_s
    left = [budget_s]

    def time_configs(configs: list):
        configs = configs[: int(left[0] / per_config)]  # the pairs raced least come first
        if len(configs) < 2:
            return None
        left[0] -= per_config * len(configs)
        session, timed = _timed_session(ctx, configs, per_config, final)
        rounds = {c: timed[c][ROUND_FIGURES] for c in configs}
        for r in trials.records(ctx.study, spec, final):
            if r.config in rounds and str(r.number) in final:
                entry = final[str(r.number)]
                final[str(r.number)] = {**entry, SESSIONS: {**entry.get(SESSIONS, {}), session: rounds[r.config]}}
        trials.store_retimed(ctx.study, final)
        return session, rounds

    raced, stayed = race(trials.records(ctx.study, spec, final), spec, time_configs, RACE_SESSIONS, among)
    if raced:
        ctx.notes.append(
            f"racing: {raced} close pairs timed in up to {RACE_SESSIONS} more sessions of interleaved rounds; "
            f"{raced - stayed} separated, {stayed} stayed equivalent within noise"
        )
