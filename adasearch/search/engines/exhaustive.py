"""engine: exhaustive: every distinct network of the space, proposed at once, so that accuracy is
measured in shared anytime passes; with the shared accuracy engine this is the exact front. `auto`
picks it for spaces up to search.exhaustive_limit configs.
"""

from __future__ import annotations

from adasearch.checks import ENUMERABLE_LIMIT
from adasearch.errors import UserError
from adasearch.search.context import RunContext
from adasearch.search.engines.base import Engine, Proposal
from adasearch.search.trials import config_key


class ExhaustiveEngine(Engine):
    name = "exhaustive"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        if ctx.space.size() > ENUMERABLE_LIMIT:  # before enumerating: a space of 1e20 would never finish
            raise UserError(
                f"{ctx.spec.spec_file or 'spec'}: search.engine: exhaustive cannot search this run: the space has "
                f"{ctx.space.size():,} configs, more than the {ENUMERABLE_LIMIT:,} it enumerates; use engine: optuna"
            )
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
