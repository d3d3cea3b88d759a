"""The front of a run's records, where timed objectives count only beyond noise: the Judge (paired
per-round comparisons, measure/paired.py), the chain rule (noise_front, front_of), the configs
equivalent to each front config, and racing the close calls. The README's "front beyond noise"
paragraph states the rule."""

from __future__ import annotations

import math

from adasearch import metrics
from adasearch.measure import paired
from adasearch.search import trials
from adasearch.search.front.pareto import as_min

SESSIONS = "timed_sessions"  # a re-timed record's rounds: {session id: {metric: [its figure in each round]}}
# The machine's speed moved by up to about this factor between two sessions of one run on 2026-12-07's
# EPYC (0.90-1.62x quiet, 0.48-1.43x busy: bench/results/front_pairs_day2b_sessions.md): two configs timed
# in different sessions and nearer than this are raced together, whatever their intervals say.
BETWEEN_SESSIONS = 2.0


class Judge:
    """Compares the records of one spec's objectives, timed objectives only beyond noise.

    Two records' timed figure is compared, first that applies:
    - both were timed in the same interleaved rounds (SESSIONS): paired, measure/paired.py;
    - both carry 95 % intervals (timed in different sessions): separated when the intervals are
      disjoint and the figures differ by more than paired.PRACTICAL;
    - otherwise (brief per-trial timings, predictions): the figures themselves.
    """

    def __init__(self, spec):
        self.timed = [(o.metric, o.direction) for o in spec.objectives if metrics.REGISTRY[o.metric].timed]
        self.fixed = [(o.metric, o.direction) for o in spec.objectives if not metrics.REGISTRY[o.metric].timed]
        self._keys: dict = {}
        self._comparisons: dict = {}

    def key(self, r) -> str:
        if id(r) not in self._keys:
            self._keys[id(r)] = trials.config_key(r.config)
        return self._keys[id(r)]

    def rank(self, r) -> tuple:
        """The order the front is built in: deterministic objectives, best first; then the timed figures;
        then fewer MACs; then the config's label. A record that dominates another ranks before it (with
        several timed objectives, unless its point figures disagree with the paired test)."""
        objectives = self.fixed + self.timed
        return (*as_min([r.metrics[m] for m, _ in objectives], [d for _, d in objectives]),
                r.metrics.get(metrics.COMPUTE, math.inf), r.config.label())  # fmt: skip

    def paired_comparison(self, a, b, metric: str):
        """a's figure of a timed metric against b's (paired.Comparison) from the rounds both ran in; None
        when they share none."""
        sa, sb = a.metrics.get(SESSIONS), b.metrics.get(SESSIONS)
        if not (sa and sb):
            return None
        ka, kb = self.key(a), self.key(b)
        first, second = (sa, sb) if ka <= kb else (sb, sa)  # one order per pair: the test is mirrored exactly
        # keyed by the sessions too: a race adds sessions to records, and the comparison is then made anew
        cache = (min(ka, kb), max(ka, kb), metric, tuple(first), tuple(second))
        if cache not in self._comparisons:
            ra, rb = paired.shared_rounds(first, second, metric)
            self._comparisons[cache] = paired.compare(ra, rb) if ra else None
        found = self._comparisons[cache]
        return found if found is None or ka <= kb else found.reversed()

    def larger(self, a, b, metric: str) -> int:
        """+1: a's figure of a timed metric is larger than b's beyond noise, -1: smaller, 0: not separated."""
        found = self.paired_comparison(a, b, metric)
        if found is not None:
            return found.sign
        xa, xb = a.metrics[metric], b.metrics[metric]
        low, high = metrics.interval_columns(metric)
        if all(r.metrics.get(c) is not None for r in (a, b) for c in (low, high)):
            disjoint = a.metrics[low] > b.metrics[high] or b.metrics[low] > a.metrics[high]
            if not disjoint or abs(math.log(xa / xb)) <= math.log(1 + paired.PRACTICAL):
                return 0
        return (xa > xb) - (xa < xb)

    def better(self, a, b, metric: str, direction: str) -> int:
        """+1: a is better than b on this timed objective beyond noise, -1: worse, 0: not separated."""
        s = self.larger(a, b, metric)
        return s if direction == "maximize" else -s

    def no_worse(self, a, b) -> tuple[bool, bool]:
        """(a is at least as good as b on every deterministic objective, a is strictly better on one)."""
        worse = better = False
        for m, d in self.fixed:
            va, vb = as_min([a.metrics[m], b.metrics[m]], [d, d])
            worse |= va > vb
            better |= va < vb
        return not worse, better

    def dominates(self, b, a) -> bool:
        """b is at least as good as a on every deterministic objective, separated-worse on no timed one,
        and better on one: strictly on a deterministic objective, or separated on a timed one."""
        ok, better = self.no_worse(b, a)
        if not ok:
            return False
        for m, d in self.timed:
            s = self.better(b, a, m, d)
            if s < 0:
                return False
            better |= s > 0
        return better

    def signs(self, a, b) -> list:
        """better(a, b) for each timed objective."""
        return [self.better(a, b, m, d) for m, d in self.timed]

    def unpaired(self, a, b) -> bool:
        """Both re-timed, in no common round, and within BETWEEN_SESSIONS of each other on every timed
        objective: their order came from intervals of sessions the machine's speed may have moved between."""
        sa, sb = a.metrics.get(SESSIONS), b.metrics.get(SESSIONS)
        if not (self.timed and sa and sb) or any(paired.shared_rounds(sa, sb, m)[0] for m, _ in self.timed):
            return False
        return all(abs(math.log(a.metrics[m] / b.metrics[m])) <= math.log(BETWEEN_SESSIONS) for m, _ in self.timed)

    def settled(self, a, b) -> bool:
        """Every timed objective's paired interval lies within the practical threshold (paired.Comparison.settled):
        equivalent beyond noise, so more rounds would not separate them."""
        found = [self.paired_comparison(a, b, m) for m, _ in self.timed]
        return bool(found) and all(c is not None and c.settled for c in found)

    def tied(self, a, b) -> bool:
        """No timed objective separates a and b (there is one at least)."""
        return bool(self.timed) and not any(self.signs(a, b))

    def same_point(self, a, b) -> bool:
        """Equal on every deterministic objective and tied on every timed one: one point of the front."""
        return self.no_worse(a, b) == (True, False) and self.tied(a, b)


def _unique(recs: list, judge: Judge) -> list:
    """One record per config (a sampler can propose a config twice): the earliest trial's."""
    first: dict = {}
    for r in sorted(recs, key=lambda r: r.number):
        first.setdefault(judge.key(r), r)
    return list(first.values())


def noise_front(recs: list, spec, judge: Judge = None) -> list:
    """The non-dominated records under Judge.dominates, with the chain rule: records are taken in
    Judge.rank order, and one joins the front unless a record already on the front dominates it. So a
    record dominated only by records that are themselves off the front stays on it (A ~ B ~ C with A
    and C separated: A, then C; B leaves, beaten by A), and the figures alone, never the records'
    order, decide. Then one record per point of the front (_one_per_point)."""
    judge = judge or Judge(spec)
    front: list = []
    for r in sorted(_unique(recs, judge), key=judge.rank):
        if not any(judge.dominates(f, r) for f in front):
            front.append(r)
    return _one_per_point(front, judge)


def _one_per_point(front: list, judge: Judge) -> list:
    """The front with one config per point (Judge.same_point): the one with the fewest MACs, then the
    first label, stands for the configs equal to it on every deterministic objective that no timed
    objective separates from it; they are its `equivalent` (equivalents). Left to the timing, such a
    group is on the front whole or in part as the noise separates its members or not: on 2026-12-07's
    quiet demo runs, three to seven configs of accuracy 0.973 (bench/results/front_stability_exitcurve2.md,
    the share of runs each config was on the front). Front order is kept."""
    kept: list = []
    for r in sorted(front, key=lambda r: (r.metrics.get(metrics.COMPUTE, math.inf), r.config.label())):
        if not any(judge.same_point(k, r) for k in kept):
            kept.append(r)
    return [r for r in front if any(r is k for k in kept)]


def front_of(recs: list, spec) -> list:
    """Feasible records on the front beyond noise (noise_front), best first objective first."""
    front = noise_front([r for r in recs if r.feasible], spec)
    first = spec.objectives[0]
    return sorted(front, key=lambda r: r.metrics[first.metric], reverse=first.direction == "maximize")


def equivalents(front: list, recs: list, spec) -> dict:
    """{config key of a front record: [labels of the configs equivalent to it within noise]}: the other
    feasible configs that no timed objective separates from it and that are no better on any
    deterministic objective, so that a user sees the alternatives a repeat run might have picked."""
    judge = Judge(spec)
    if not judge.timed:
        return {judge.key(f): [] for f in front}
    others = sorted(_unique([r for r in recs if r.feasible], judge), key=judge.rank)
    return {
        judge.key(f): [x.config.label() for x in others
                       if judge.key(x) != judge.key(f) and judge.tied(x, f) and judge.no_worse(f, x)[0]]
        for f in front
    }  # fmt: skip


def beaten(recs: list, spec, judge: Judge = None, front: list = None) -> list:
    """Feasible records timed in interleaved rounds that a record on the front (noise_front) dominates
    beyond noise, paired, on every timed objective: more rounds cannot bring them back onto it."""
    judge = judge or Judge(spec)
    feasible = [r for r in recs if r.feasible]
    front = noise_front(feasible, spec, judge) if front is None else front
    return [
        x
        for x in _unique(feasible, judge)
        if x.metrics.get(SESSIONS)
        and any(f is not x and judge.dominates(f, x) and 0 not in judge.signs(x, f) and not judge.unpaired(x, f)
                for f in front)
    ]  # fmt: skip


def close_calls(recs: list, spec, judge: Judge = None) -> list:
    """Pairs of records, both timed in interleaved rounds, whose undecided timed order decides whether one
    of them is on the front: a front record f and another x that f is no worse than on every
    deterministic objective and that no timed objective separates from f (separated in x's favour, f
    would not dominate x; in f's, f would) while one at least is not settled within the practical
    threshold (Judge.settled: more rounds would not separate those), or that only the intervals of
    different sessions separate (Judge.unpaired), where no front record dominates x beyond noise,
    paired, on every timed objective (beaten: then more rounds could not bring x back). Each pair once, the
    higher ranked first."""
    judge = judge or Judge(spec)
    feasible = [r for r in recs if r.feasible]
    front = noise_front(feasible, spec, judge)
    out = {id(r) for r in beaten(feasible, spec, judge, front)}
    pairs = []
    for x in sorted(_unique(feasible, judge), key=judge.rank):
        if not x.metrics.get(SESSIONS) or id(x) in out:
            continue
        rivals = [f for f in front if f is not x]
        for f in rivals:
            undecided = (judge.tied(x, f) and not judge.settled(x, f)) or judge.unpaired(x, f)
            if f.metrics.get(SESSIONS) and judge.no_worse(f, x)[0] and undecided:
                pair = (f, x) if judge.rank(f) <= judge.rank(x) else (x, f)
                if pair not in pairs:
                    pairs.append(pair)
    return pairs


def race(recs: list, spec, time_configs, sessions: int, among: set | None = None) -> tuple[int, int]:
    """Race the close calls of `recs` (close_calls) in at most `sessions` more sessions of interleaved
    rounds. time_configs(configs) times a prefix of those configs together (as many as its budget
    allows) and returns (session id, {config: {metric: [figure per round]}}), or None when the budget is
    spent. The configs come pair by pair, the pairs raced least so far first (then by rank), so that
    pairs that never separate do not starve the others. Each session's rounds are added to the records
    of its configs (SESSIONS), so the next comparisons pool them. Returns (pairs raced, of which still
    not separated at the end: equivalent). among: config keys (Judge.key); when given, only the close calls
    with one of them are raced."""
    judge = Judge(spec)
    raced: dict = {}  # (key, key) -> sessions it was raced in
    for _ in range(sessions):
        pairs = [(judge.key(a), judge.key(b), a, b) for a, b in close_calls(recs, spec, judge)]
        pairs = [p for p in pairs if among is None or {p[0], p[1]} & among]
        pairs.sort(key=lambda p: raced.get(p[:2], 0))  # stable: rank order within a count
        timed = time_configs(list(dict.fromkeys(r.config for *_, a, b in pairs for r in (a, b)))) if pairs else None
        if timed is None:
            break
        session, rounds = timed
        for r in recs:
            if r.config in rounds:
                r.metrics[SESSIONS] = {**r.metrics.get(SESSIONS, {}), session: rounds[r.config]}
        for ka, kb, a, b in pairs:
            if a.config in rounds and b.config in rounds:
                raced[ka, kb] = raced.get((ka, kb), 0) + 1
    by_key: dict = {}
    for r in recs:
        by_key.setdefault(judge.key(r), r)
    return len(raced), sum(judge.tied(by_key[a], by_key[b]) for a, b in raced)
