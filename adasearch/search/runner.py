"""`adasearch run`: spec -> model + data -> engine -> storage -> Pareto set -> re-timed finalists -> results.

Running the same command again resumes from the storage: finished trials are kept and the engine
only adds what is missing. Ctrl-C stops after the current trial and still writes the results folder.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from adasearch.errors import UserError
from adasearch.search import trials as T
from adasearch.search.engines import Measurer, RunContext, choose_engine, make_sampler
from adasearch.search.pareto import pareto_front
from adasearch.search.space import SearchSpace
from adasearch.spec import RunSpec


def _rdb_storage(url: str, attempts: int = 5):
    """An RDBStorage, retried while another process (a worker, or a reader of a run in progress)
    creates the same schema: SQLAlchemy's create-if-missing races, and the loser sees an
    IntegrityError or "table already exists" although the storage is fine a moment later."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError) as e:
            racing = isinstance(e, IntegrityError) or "already exists" in str(e)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def open_study(spec: RunSpec, out_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = spec.search.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    try:
        storage = _rdb_storage(url)
    except Exception as e:
        raise UserError(f"search.storage: cannot open {url!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        f"allowed: an Optuna storage URL such as sqlite:///path/study.db")
    directions = [o.direction for o in spec.objectives]
    sampler = make_sampler(spec.search.sampler, spec.search.seed, spec.search.trials)
    study = optuna.create_study(study_name=spec.run_name, storage=storage, directions=directions,
                                load_if_exists=True, sampler=sampler)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise UserError(f"storage {url!r} already holds study {spec.run_name!r} with directions {stored}; "
                        f"the spec asks for {directions}: use another output/storage or name")
    # Directions alone do not tell accuracy/gmacs from accuracy/latency: the stored values would be
    # read as the wrong metric. Record the objectives' names and refuse a resume that changes them.
    metrics = [o.metric for o in spec.objectives]
    recorded = study.user_attrs.get("objectives")
    if recorded is None:
        study.set_user_attr("objectives", metrics)
    elif recorded != metrics:
        raise UserError(f"storage {url!r} already holds study {spec.run_name!r} for objectives {recorded}; "
                        f"the spec asks for {metrics}: use another output/storage or name")
    return study


def prepare(spec: RunSpec) -> RunContext:
    """Load model, data and space, open the storage: everything an engine needs."""
    from adasearch.data.datasets import check_labels, load_data
    from adasearch.measure.environment import resolve_device
    from adasearch.measure.evaluator import Evaluator, Hardware
    from adasearch.model.loading import load_model

    resolve_device(spec.hardware.device)
    model = load_model(spec.model if spec.model == "demo" else spec.resolve(spec.model))
    space = SearchSpace.load(spec.search.space, model.cfg, Path(spec.base_dir))
    builtin = spec.data.source == "digits" or spec.data.source.startswith("digits:")
    source = spec.data.source if builtin else spec.resolve(spec.data.source)  # e.g. digits_small.npz is a file
    data = load_data(source, limit=spec.data.limit, seed=spec.data.seed, img_size=model.cfg.img_size,
                     channels=model.cfg.in_channels)
    check_labels(data, model.cfg.num_classes, "data.source")
    hw = Hardware(**spec.hardware.model_dump())
    evaluator = Evaluator(model, data, hw, latency_budget_s=spec.search.latency_budget_s)
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, out)
    return RunContext(spec, space, study, Measurer(evaluator, space, spec, T.measured_keys(study)))


class _Progress:
    """Trials done, the current front size and the ETA, on one rich progress line."""

    def __init__(self, ctx: RunContext, total: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.ctx = ctx
        self.directions = [o.direction for o in ctx.spec.objectives]
        self.front: list = []
        self._synced = time.monotonic()
        for metrics in ctx.measurer.known.values():  # resuming: start from what the storage holds
            self._consider(metrics)
        self.done = len(ctx.measurer.known)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("front {task.fields[front]}"), TimeRemainingColumn(), disable=not enabled)
        self.task = self.bar.add_task("trials", total=max(total, self.done), completed=self.done,
                                      front=len(self.front))

    def _consider(self, metrics: Optional[dict]) -> None:
        if metrics is not None and not T.violations(self.ctx.spec, metrics):
            pts = self.front + [T.objective_values(self.ctx.spec, metrics)]
            self.front = [pts[i] for i in pareto_front(pts, self.directions)]

    def add(self, metrics: Optional[dict] = None) -> None:
        self.done += 1
        if time.monotonic() - self._synced > 2 and self.ctx.spec.search.workers > 1:
            self.done = len(T.records(self.ctx.study, self.ctx.spec))  # other workers' trials too
            self._synced = time.monotonic()
        self._consider(metrics)
        self.bar.update(self.task, completed=self.done, front=len(self.front))


def run(spec: RunSpec, progress: bool = True, console=None) -> dict:
    """Search, finish and write the results folder. Returns a summary dict."""
    from rich.console import Console

    from adasearch.search.results import print_summary, write_results

    console = console or Console(stderr=True)
    ctx = prepare(spec)
    engine = choose_engine(spec, ctx.space)
    before = len(T.records(ctx.study, spec))  # trials, as the summary counts them (not distinct configs)
    bar = _Progress(ctx, engine.planned(ctx), progress)

    def on_trial(metrics=None):
        bar.add(metrics)

    ctx.on_trial = on_trial
    interrupted = False
    logging.getLogger("optuna").setLevel(logging.WARNING)
    with bar.bar:
        try:
            engine.run(ctx)
        except KeyboardInterrupt:
            interrupted = True
    interrupted = interrupted or bool(ctx.stop)
    recs = T.records(ctx.study, spec)
    # Interrupted: keep the re-timed figures earlier complete runs stored, but re-time nothing now.
    final = (retime_finalists(ctx, recs) if recs and not interrupted
             else dict(ctx.study.user_attrs.get("final_metrics", {})))
    recs = T.records(ctx.study, spec, final)
    summary = write_results(ctx, recs, engine.name, interrupted=interrupted, new_trials=len(recs) - before)
    print_summary(summary, recs, spec, console)
    if interrupted:
        console.print(f"interrupted: {len(recs)} finished trials are kept in {spec.output_dir}; "
                      f"run the same command again to resume")
    return summary


def candidates(recs: list, spec: RunSpec) -> list:
    """The trials worth re-timing: the front, and when latency is measured, also the next
    non-dominated layer (at most twice the front's size), since a trial can be pushed off the front
    by timing noise alone."""
    directions = [o.direction for o in spec.objectives]
    first: dict = {}
    for r in recs:  # one trial per config (samplers can repeat one): the first, so it is timed once
        first.setdefault(r.config, r)
    recs = list(first.values())
    remaining = [r for r in recs if r.feasible] or list(recs)
    chosen: list = []
    for layer in range(2 if spec.needs_latency else 1):
        idx = pareto_front([T.objective_values(spec, r.metrics) for r in remaining], directions)
        picked = [remaining[i] for i in idx][: max(1, 2 * len(chosen)) if layer else None]
        chosen += picked
        remaining = [r for r in remaining if r not in picked]
        if not remaining:
            break
    if spec.needs_latency:
        chosen += near_misses(recs, spec, chosen, limit=len(chosen))
    return chosen


def near_misses(recs: list, spec: RunSpec, chosen: list, limit: int) -> list:
    """Trials that broke only timed constraints (a noisy brief timing can do that) and would be on the
    front if they met them: the `limit` closest to their bounds."""
    from adasearch.search.pareto import dominates
    from adasearch.spec import LATENCY_METRICS

    directions = [o.direction for o in spec.objectives]
    front = [T.objective_values(spec, r.metrics) for r in chosen if r.feasible]
    misses = [r for r in recs if not r.feasible and r not in chosen and set(r.violations) <= LATENCY_METRICS
              and not any(dominates(f, T.objective_values(spec, r.metrics), directions) for f in front)]
    return sorted(misses, key=lambda r: T.relative_violation(spec, r))[:limit]


def retime_finalists(ctx: RunContext, recs: list) -> dict:
    """Time every Pareto candidate again, alone and with a longer budget; store it in the study.

    Re-timing can move the front: when candidates come out slower, a trial that was never re-timed
    may become non-dominated. Such trials are re-timed too, until every config on the final front
    carries the longer timing (each round adds at least one, so this ends)."""
    from adasearch.search.results import front_of

    evaluator = ctx.measurer.evaluator
    final = dict(ctx.study.user_attrs.get("final_metrics", {}))
    retimed: set = set()
    todo = candidates(recs, ctx.spec)
    while todo:
        for r in todo:
            m = evaluator.measure_accuracy_and_cost([r.config])[r.config]
            evaluator.time(m, r.config, budget_s=ctx.spec.search.final_latency_budget_s)
            final[str(r.number)] = {k: v for k, v in m.metrics().items() if v is not None}
            retimed.add(r.number)
        todo = [r for r in front_of(T.records(ctx.study, ctx.spec, final), ctx.spec) if r.number not in retimed]
    ctx.study.set_user_attr("final_metrics", final)
    return final
