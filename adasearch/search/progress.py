"""The search's progress line: distinct networks measured, the current front size, the ETA and what the
runtime's building has cost; a line per step before proposals (profiling, predicting) and for re-timing."""

from __future__ import annotations

import time
from typing import Optional

from rich.progress import ProgressColumn
from rich.text import Text

from adasearch.search import trials
from adasearch.search.context import RunContext
from adasearch.search.front.pareto import pareto_front


class BuildColumn(ProgressColumn):
    """What the runtime's building (compiling, capturing, exporting) has cost so far, read at every refresh
    so that a compile under way counts up; on the first line only, and empty for eager."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime

    def render(self, task) -> Text:
        return Text(self.runtime.progress_text() if task.id == 0 else "", style="dim")


class SearchProgress:
    """One rich progress line. `add(metrics)` after each recorded trial; a context manager."""

    def __init__(self, ctx: RunContext, total: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.ctx = ctx
        self.directions = [o.direction for o in ctx.spec.objectives]
        self.front: list = []
        self._synced = time.monotonic()
        for metrics in ctx.measurer.known.values():  # resuming: start from what the storage holds
            self._consider(metrics)
        self.done = ctx.measurer.count()
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("front {task.fields[front]}"),
            TimeRemainingColumn(),
            BuildColumn(ctx.measurer.evaluator.runtime),
            disable=not enabled,
        )
        self.task = self.bar.add_task(
            "networks", total=max(total, self.done), completed=self.done, front=len(self.front)
        )
        self.steps: dict = {}  # description -> task of work before the networks (profiling, predicting)
        ctx.status = self.step

    def step(self, description: str, done: int, total: int) -> None:
        """Progress of a step an engine takes before proposing (e.g. profiling the target's latency)."""
        if description not in self.steps:
            self.steps[description] = self.bar.add_task(description, total=total, front="-")
        self.bar.update(self.steps[description], completed=done, total=total)

    def __enter__(self) -> SearchProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def _consider(self, metrics: Optional[dict]) -> None:
        complete = metrics is not None and all(metrics.get(o.metric) is not None for o in self.ctx.spec.objectives)
        if complete and not trials.violations(self.ctx.spec, metrics):
            pts = self.front + [trials.objective_values(self.ctx.spec, metrics)]
            self.front = [pts[i] for i in pareto_front(pts, self.directions)]

    def add(self, metrics: Optional[dict] = None) -> None:
        self.done = self.ctx.measurer.count()
        if time.monotonic() - self._synced > 2 and self.ctx.spec.search.workers > 1:
            self.done = self.ctx.distinct_measured()  # other workers' trials too
            self._synced = time.monotonic()
        self._consider(metrics)
        self.bar.update(self.task, completed=self.done, front=len(self.front))
