"""The engine boundary: engines propose configs and are told the results; they never measure or store.

It follows Ray Tune's Searcher and Optuna's ask/tell. The runner's one loop asks an Engine for
proposals, measures each once (context.Measurer), records it (context.record_trial, the only writer
of trials) and tells the engine. Ray Tune schedules its own trials, so the ray engine is a Driver
instead: its workers measure and return, and the driver records each result through the same
record_trial.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from adasearch.config import DeploymentConfig
from adasearch.search.context import Measured, RunContext


@dataclass
class Proposal:
    config: DeploymentConfig
    params: dict  # flat parameters in the space's encoding (what Optuna stores, what trials.csv shows)
    trial: object = None  # a live optuna.Trial when the engine asks through study.ask, else None
    predicted: Optional[dict] = None  # timed figures the engine predicted (engine: model): recorded, not timed


class Engine(abc.ABC):
    """Proposes configs of the space and is told their results.

    Contract:
    - ``ask()`` returns the next proposals to measure, one or many (many share accuracy passes), or
      an empty list when the engine has nothing more to propose. It must not measure or store.
    - Every proposal it returned is either told (``tell``) after the runner recorded it, or dropped
      (``drop``) when the run stops before measuring it. Nothing else reaches the storage.
    - ``retimed(records)`` tells it the figures of the finalists' interleaved re-timing; an engine that
      predicted them can ask to measure more (engine: model), others ignore it.
    - ``planned()`` is the number of distinct networks the engine expects to measure in total,
      finished ones included: the progress bar's total.
    """

    name: str = "engine"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def start(self) -> None:  # noqa: B027 (an optional hook)
        """Long work before the first proposal, which a Ctrl-C may interrupt (``ask`` runs with signals
        deferred, so that a live trial it created always reaches the runner)."""

    @abc.abstractmethod
    def ask(self) -> list:
        """-> list[Proposal]; [] when done."""

    def tell(self, proposal: Proposal, measured: Measured) -> None:  # noqa: B027 (an optional hook)
        """The proposal was measured (measured.reused: a network measured before) and recorded."""

    def drop(self, proposal: Proposal) -> None:  # noqa: B027 (an optional hook)
        """The proposal will not be measured (the run stops)."""

    @abc.abstractmethod
    def planned(self) -> int:
        """Distinct networks this engine expects the run to hold when it is done."""

    def retimed(self, records: list) -> bool:
        """Told the records after the finalists' re-timing (trials.TrialRecord, re-timed figures in).
        True when the engine has more to propose: the runner then asks it again, and re-times again."""
        return False


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
