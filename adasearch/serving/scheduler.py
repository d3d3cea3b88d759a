"""Which front config runs the next batch, and which requests it takes: a deadline-aware choice.

One set of weights holds every config on the front, so switching costs nothing; the scheduler picks,
per batch, the most accurate config whose predicted latency at that batch size fits the tightest
deadline left in the batch, counting the time its requests already spent queued (SuperServe, Proteus).

The contract:
- `plan(queue)` looks at the requests waiting (in arrival order, all of one input shape) and returns the
  config, the requests the batch takes (a prefix, in deadline order) and the requests that no config can
  finish in time even alone (`late`: the server answers them 503 rather than serve them late).
- The batch is as large as a config can serve within the tightest deadline among the requests it takes:
  throughput first, since a smaller batch leaves more waiting; then the most accurate config that fits it.
  So, as the queue grows (larger batches, less time left), the choice shifts to cheaper configs.
- `admit(...)` sheds a request at arrival when even the fastest config it may use, at full batches, cannot
  drain the work ahead of it and its own batch before its deadline.
- A request's max_drop limits it, and every batch it joins, to configs certified for it; the scheduler
  never serves a config outside that guarantee, however late the request is.
- Time comes from an injectable clock (seconds) and latencies from an injectable LatencyPredictor, so a
  test drives both; nothing here runs a model.

Predicted latencies (FigurePredictor): a config's latency_p90_ms in pareto.json is per batch of the run's
hardware.batch_size B. At another batch size b the prediction is, first that found:
1. the run's latency model (latency_model.json), where it holds every part the config runs at batch b:
   its p90 for a forward in which every sample runs every block (an upper bound for configs that exit);
2. the p90 at B scaled by the config's own forward times measured at b and at B while the server
   warmed up (medians of a few forwards, same device and threads);
3. the stated rule: t(b) = t(B) for b <= B (a smaller batch is no slower), t(B) * b / B above it (no
   batching gain assumed); conservative wherever a forward's time grows with b and less than linearly.
With `--latency warm-up` the p90 of the forwards timed at warm-up comes first (see FigurePredictor).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Optional, Protocol

from adasearch.metrics import P90, budget_latency, tie_break

WARM_UP_REPS = 10  # timed forwards per config and batch size when warm-up timings are the latency source
STATIC, DEADLINE = "static", "deadline"  # policies: the most accurate config always | the deadline-aware choice


class LatencyPredictor(Protocol):
    def predict_ms(self, entry, batch_size: int) -> Optional[float]:
        """Predicted latency (ms, p90) of one forward of `entry`'s config on a batch of batch_size samples;
        None when nothing is known of it (such a config is never chosen for a deadline)."""


@dataclass(frozen=True)
class Pending:
    """What the scheduler knows of a waiting request."""

    samples: int  # images in the request
    deadline: float = math.inf  # clock time (s) by which its answer should be out; inf: none
    max_drop: Optional[float] = None  # the certified guarantee it asked for, if any


@dataclass(frozen=True)
class Plan:
    entry: object  # the config's deployment Entry; None when nothing is taken (every candidate late)
    take: tuple  # indices into the queue given to plan(), in the order they form the batch
    late: tuple  # indices no config can answer by their deadline
    predicted_ms: float  # predicted forward time of the batch (0 when nothing is taken)
    within_deadline: bool  # the predicted finish is within every taken request's deadline


class NoCertifiedConfig(Exception):
    """A request asked for a max_drop that no config of the deployment is certified for."""


class Scheduler:
    def __init__(
        self,
        entries: Sequence,
        predictor: LatencyPredictor,
        max_batch: int,
        policy: str = DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ):
        if policy not in (STATIC, DEADLINE):
            raise ValueError(f"policy {policy!r}: allowed {STATIC}, {DEADLINE}")
        self.entries = sorted(entries, key=tie_break_of, reverse=True)  # most accurate first
        self.predictor = predictor
        self.max_batch = max_batch
        self.policy = policy
        self.clock = clock

    # ------------------------------------------------------------ which configs a request may use

    def eligible(self, max_drop: Optional[float]) -> list:
        """Configs a request with this max_drop may run under, most accurate first."""
        if max_drop is None:
            return self.entries
        covered = [e for e in self.entries if e.covers(max_drop)]
        if not covered:
            raise NoCertifiedConfig(
                f"max_drop={max_drop:g}: no config of this deployment is certified to lose at most that much "
                f"top-1 (certify the run with `adasearch certify`, or ask for a larger max_drop)"
            )
        return covered

    def _fastest_ms(self, configs: list, samples: int) -> float:
        times = [self.predictor.predict_ms(e, samples) for e in configs]
        return min((t for t in times if t is not None), default=math.inf)

    # ------------------------------------------------------------ admission

    def admit(self, request: Pending, samples_ahead: int, busy_until: float) -> Optional[str]:
        """None to admit; else why the request is shed. samples_ahead: samples queued before it;
        busy_until: clock time the running forward is predicted to end (<= now when idle)."""
        if self.policy == STATIC or request.deadline == math.inf:
            return None
        now = self.clock()
        configs = self.eligible(request.max_drop)
        full, left = divmod(samples_ahead + request.samples, self.max_batch)
        wait_ms = full * self._fastest_ms(configs, self.max_batch) + (self._fastest_ms(configs, left) if left else 0)
        finish = max(now, busy_until) + wait_ms / 1e3
        if finish > request.deadline:
            return f"predicted to finish {1e3 * (finish - request.deadline):.1f} ms after its deadline"
        return None

    # ------------------------------------------------------------ one batch

    def plan(self, queue: Sequence[Pending]) -> Plan:
        now = self.clock()
        order = sorted(range(len(queue)), key=lambda i: queue[i].deadline)  # earliest deadline first; stable
        late = []
        if self.policy == DEADLINE:
            for i in order:
                r = queue[i]
                soonest = now + self._fastest_ms(self.eligible(r.max_drop), r.samples) / 1e3
                if r.deadline < math.inf and soonest > r.deadline:
                    late.append(i)
        candidates = [i for i in order if i not in late]
        prefix, samples = [], 0
        for i in candidates:  # the most a batch may take; a request larger than max_batch runs alone
            if prefix and samples + queue[i].samples > self.max_batch:
                break
            prefix.append(i)
            samples += queue[i].samples
        while prefix:
            taken = [queue[i] for i in prefix]
            drops = [r.max_drop for r in taken if r.max_drop is not None]
            configs = self.eligible(min(drops) if drops else None)
            size = sum(r.samples for r in taken)
            tightest = min(r.deadline for r in taken)
            if self.policy == STATIC or tightest == math.inf:
                entry = configs[0]
                ms = self.predictor.predict_ms(entry, size) or 0.0
                return Plan(entry, tuple(prefix), tuple(late), ms, now + ms / 1e3 <= tightest)
            for entry in configs:  # most accurate first
                ms = self.predictor.predict_ms(entry, size)
                if ms is not None and now + ms / 1e3 <= tightest:
                    return Plan(entry, tuple(prefix), tuple(late), ms, True)
            prefix.pop()  # no config makes it at this size: a smaller batch
        return Plan(None, (), tuple(late), 0.0, True)


def tie_break_of(entry) -> tuple:
    return tie_break(entry.metrics)


class FigurePredictor:
    """The run's figures at its batch size, carried to other batch sizes (see the module docstring).

    source "warm-up" predicts from the serving machine instead: the p90 of the forwards timed at each batch
    size while the server warmed up (WARM_UP_REPS of them), for a run whose figures no longer describe the
    machine (measured elsewhere, or under other load); the run's figures remain the fallback."""

    RUN, WARM_UP = "run", "warm-up"

    def __init__(self, batch_size: int, latency_model=None, model=None, source: str = RUN):
        if source not in (self.RUN, self.WARM_UP):
            raise ValueError(f"latency source {source!r}: allowed {self.RUN}, {self.WARM_UP}")
        self.batch_size = max(1, int(batch_size or 1))  # the run's hardware.batch_size: what p90 is per batch of
        self.latency_model = latency_model  # a measure.latency_model.LatencyModel, or None
        self.model = model  # the AdaPerceiver, to expand a config into the plan the latency model reads
        self.source = source
        self.warm_reps = WARM_UP_REPS if source == self.WARM_UP else 3  # timed forwards per config and size
        self.warm_ms: dict = {}  # (config name, batch size) -> forward times (ms) measured at warm-up
        self._cache: dict = {}

    def record_warm_up(self, name: str, batch_size: int, times_ms: list) -> None:
        self.warm_ms[(name, batch_size)] = sorted(times_ms)
        self._cache.clear()

    def predict_ms(self, entry, batch_size: int) -> Optional[float]:
        key = (entry.name, batch_size)
        if key not in self._cache:
            self._cache[key] = self._predict(entry, batch_size)
        return self._cache[key]

    def _predict(self, entry, b: int) -> Optional[float]:
        here = self.warm_ms.get((entry.name, b))
        if self.source == self.WARM_UP and here:
            return here[min(len(here) - 1, math.ceil(0.9 * len(here)) - 1)]  # p90, nearest rank
        at_run = budget_latency(entry.metrics)
        if at_run is None or not math.isfinite(at_run):
            return None
        if b == self.batch_size:
            return at_run
        from_model = self._from_latency_model(entry, b)
        if from_model is not None:
            return from_model
        there = self.warm_ms.get((entry.name, self.batch_size))
        if here and there:
            return at_run * statistics.median(here) / statistics.median(there)
        return at_run * max(1.0, b / self.batch_size)

    def _from_latency_model(self, entry, b: int) -> Optional[float]:
        if self.latency_model is None or self.model is None:
            return None
        from adasearch.measure.latency_model import part_keys

        plan = self.model.plan(**entry.config.to_dict())
        if any(k not in self.latency_model.parts for k in part_keys(plan, b)):
            return None  # not profiled at this batch size
        return replace(self.latency_model, batch_size=b).predict(plan)[P90]
