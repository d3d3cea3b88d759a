"""Search engines: they propose configs and are told the results; they never measure or store.

The boundary follows Ray Tune's Searcher and Optuna's ask/tell. The runner's one loop asks an
Engine for proposals, measures each once (context.Measurer), records it (context.record_trial, the
only writer of trials) and tells the engine. Ray Tune schedules its own trials, so the ray engine
is a Driver instead: its workers measure and return, and the driver records each result through the
same record_trial.

- exhaustive: every distinct network of the space, proposed at once so that accuracy is measured in
  shared anytime passes; with the shared accuracy engine this is the exact front. `auto` picks it for
  spaces up to search.exhaustive_limit configs.
- optuna: a multi-objective sampler (nsga2, tpe, gp, random, bruteforce) through study.ask/tell,
  with constraints given to it through trial.set_constraint.
- ray: Ray Tune driving OptunaSearch (ray_engine.py).

The trial budget (search.trials) counts distinct networks. A sampler may propose a network that
was measured already: the proposal is recorded as a trial with the stored figures (so the sampler
learns it) but does not count. TPE on a small categorical space converges and then repeats itself,
so after EXPLORE_AFTER repeats in a row the engine enqueues one unmeasured network, drawn with the
run's seed (Optuna's enqueue_trial), and the sampler goes on from there. A search ends early, with
a note, when every network of the space is measured or no unmeasured one can be found.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import Callable, Optional

from adasearch.config import DeploymentConfig
from adasearch.search.context import Measured, RunContext
from adasearch.search.trials import config_key

EXPLORE_AFTER = 3  # repeated proposals in a row before an unmeasured network is enqueued
REPEAT_LIMIT = 50  # repeated proposals in a row after which the search is taken to have run dry
DRAWS = 200  # random draws tried when looking for an unmeasured network of a large space


@dataclass
class Proposal:
    config: DeploymentConfig
    params: dict  # flat parameters in the space's encoding (what Optuna stores, what trials.csv shows)
    trial: object = None  # a live optuna.Trial when the engine asks through study.ask, else None


class Engine(abc.ABC):
    """Proposes configs of the space and is told their results.

    Contract:
    - ``ask()`` returns the next proposals to measure, one or many (many share accuracy passes), or
      an empty list when the engine has nothing more to propose. It must not measure or store.
    - Every proposal it returned is either told (``tell``) after the runner recorded it, or dropped
      (``drop``) when the run stops before measuring it. Nothing else reaches the storage.
    - ``planned()`` is the number of distinct networks the engine expects to measure in total,
      finished ones included: the progress bar's total.
    """

    name: str = "engine"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    @abc.abstractmethod
    def ask(self) -> list:
        """-> list[Proposal]; [] when done."""

    def tell(self, proposal: Proposal, measured: Measured) -> None:
        """The proposal was measured (measured.reused: a network measured before) and recorded."""

    def drop(self, proposal: Proposal) -> None:
        """The proposal will not be measured (the run stops)."""

    @abc.abstractmethod
    def planned(self) -> int:
        """Distinct networks this engine expects the run to hold when it is done."""


class Driver(abc.ABC):
    """An engine that schedules its own trials (Ray Tune). Its workers measure and return; the driver
    calls ``record(measured, params)`` for each result, in the driver process, and stops starting
    trials once ``ctx.stop`` is set."""

    name: str = "driver"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    @abc.abstractmethod
    def drive(self, record: Callable[[Measured, dict], None]) -> None:
        """Run the search to its budget, recording each result through `record`."""

    @abc.abstractmethod
    def planned(self) -> int:
        """As Engine.planned."""


class ExhaustiveEngine(Engine):
    name = "exhaustive"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self._unique = ctx.space.unique()  # canonical config -> params of its first occurrence
        self._asked = False

    def ask(self) -> list:
        if self._asked:
            return []
        self._asked = True
        encode = self.ctx.space.encode_params
        return [
            Proposal(config, encode(params))
            for config, params in self._unique.items()
            if not self.ctx.measurer.reusable(config_key(config))
        ]

    def planned(self) -> int:
        return len(self._unique)


class OptunaEngine(Engine):
    """Asks the study's sampler for one config at a time (study.ask); the runner tells the study."""

    name = "optuna"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self.budget = ctx.spec.search.trials
        self.repeats = 0  # consecutive proposals of networks already measured
        # The number of distinct networks, where counting them is cheap: the search is over when all are measured.
        small = ctx.space.size() <= ctx.spec.search.exhaustive_limit
        self.unique: Optional[dict] = ctx.space.unique() if small else None
        self.networks: Optional[int] = None if self.unique is None else len(self.unique)
        self.rng = random.Random(ctx.spec.search.seed)

    def ask(self) -> list:
        done = self.ctx.distinct_measured()
        if done >= self.budget:
            return []
        if self.networks is not None and done >= self.networks:
            self.ctx.notes.append(f"every one of the space's {self.networks} networks is measured")
            return []
        if self.repeats >= REPEAT_LIMIT:
            self.ctx.notes.append(
                f"the sampler proposed only measured networks {REPEAT_LIMIT} times in a row; stopped at "
                f"{done} of {self.budget} (the space may be nearly exhausted)"
            )
            return []
        if self.repeats and self.repeats % EXPLORE_AFTER == 0:
            params = self._unmeasured()
            if params is not None:
                self.ctx.study.enqueue_trial(params)
        trial = self.ctx.study.ask()
        config = self.ctx.space.suggest(trial)
        return [Proposal(config, dict(trial.params), trial)]

    def tell(self, proposal: Proposal, measured: Measured) -> None:
        self.repeats = self.repeats + 1 if measured.reused else 0

    def _unmeasured(self) -> Optional[dict]:
        """Encoded params of a network not measured yet, drawn with the run's seed; None if none is found."""
        space, known = self.ctx.space, self.ctx.measurer.known
        if self.unique is not None:
            todo = [params for config, params in self.unique.items() if config_key(config) not in known]
            return space.encode_params(self.rng.choice(todo)) if todo else None
        choices = space.parameters()
        for _ in range(DRAWS):
            params = {name: self.rng.choice(values) for name, values in choices}
            if config_key(space.canonical(space.config_from_params(params))) not in known:
                return space.encode_params(params)
        return None

    def planned(self) -> int:
        return self.budget if self.networks is None else min(self.budget, self.networks)


def choose_engine(ctx: RunContext):
    """The spec's engine, or for `auto`: exhaustive for small spaces searched by one process with the
    default sampler, else optuna."""
    spec = ctx.spec
    name = spec.search.engine
    if name == "auto":
        small = ctx.space.size() <= spec.search.exhaustive_limit
        name = "exhaustive" if small and spec.search.workers == 1 and spec.search.sampler == "auto" else "optuna"
    if name == "ray":
        from adasearch.search.ray_engine import RayEngine

        return RayEngine(ctx)
    return {"exhaustive": ExhaustiveEngine, "optuna": OptunaEngine}[name](ctx)
