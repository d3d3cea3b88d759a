"""engine: optuna: a multi-objective sampler (nsga2, tpe, gp, random, bruteforce) through
study.ask/tell, with constraints given to it through trial.set_constraint. (engine: ray is Ray Tune
driving the same samplers, in ray.py.)

The trial budget (search.trials) counts distinct networks. A sampler may propose a network that
was measured already: the proposal is recorded as a trial with the stored figures (so the sampler
learns it) but does not count. TPE on a small categorical space converges and then repeats itself,
so after EXPLORE_AFTER repeats in a row the engine proposes one unmeasured network, drawn with the
run's seed, as a trial of its own (not through enqueue_trial, which two workers can pop at once),
and the sampler goes on from there. A search ends early, with
a note, when every network of the space is measured or no unmeasured one can be found.
"""

from __future__ import annotations

import random
from typing import Optional

from adasearch.search.context import Measured, RunContext
from adasearch.search.engines.base import Engine, Proposal
from adasearch.search.trials import config_key

EXPLORE_AFTER = 3  # repeated proposals in a row before an unmeasured network is proposed instead
REPEAT_LIMIT = 50  # repeated proposals in a row after which the search is taken to have run dry
DRAWS = 200  # random draws tried when looking for an unmeasured network of a large space


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
            if params is not None:  # recorded as a new trial, which the sampler then learns from
                return [Proposal(self.ctx.space.config_from_params(params), self.ctx.space.encode_params(params))]
        trial = self.ctx.study.ask()
        config = self.ctx.space.suggest(trial)
        return [Proposal(config, dict(trial.params), trial)]

    def tell(self, proposal: Proposal, measured: Measured) -> None:
        self.repeats = self.repeats + 1 if measured.reused else 0

    def _unmeasured(self) -> Optional[dict]:
        """Params of a network not measured yet, drawn with the run's seed; None if none is found."""
        space, measurer = self.ctx.space, self.ctx.measurer
        if self.unique is not None:
            todo = [params for config, params in self.unique.items() if not measurer.reusable(config_key(config))]
            return self.rng.choice(todo) if todo else None
        choices = space.parameters()
        for _ in range(DRAWS):
            params = {name: self.rng.choice(values) for name, values in choices}
            if not measurer.reusable(config_key(space.canonical(space.config_from_params(params)))):
                return params
        return None

    def planned(self) -> int:
        return self.budget if self.networks is None else min(self.budget, self.networks)
