"""`adasearch run`: spec -> context -> engine proposals -> one measure-and-record loop -> re-timed
finalists -> results folder.

Running the same command again resumes from the storage: finished trials are kept and the engine
only adds what is missing. Ctrl-C stops after the current trial and still writes the results folder.
With search.workers > 1 (optuna), the extra workers are processes that run the same loop on the
same storage.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

from adasearch.search import trials
from adasearch.search.context import RunContext, drop_trial, prepare, record_trial
from adasearch.search.engine_base import Driver, Engine
from adasearch.search.engines import ExhaustiveEngine, OptunaEngine
from adasearch.search.finalists import retime_finalists
from adasearch.search.progress import SearchProgress
from adasearch.search.results import RunSummary, front_of, print_summary, write_results
from adasearch.spec import RunSpec


def choose_engine(ctx: RunContext):
    """The spec's engine, or for `auto`: exhaustive for small spaces searched by one process with the
    default sampler, else optuna."""
    spec = ctx.spec
    name = spec.search.engine
    if name == "auto":
        small = ctx.space.size() <= spec.search.exhaustive_limit
        name = "exhaustive" if small and spec.search.workers == 1 and spec.search.sampler == "auto" else "optuna"
    if name == "ray":
        from adasearch.search.ray_engine import RayEngine  # imports Ray only when asked for

        return RayEngine(ctx)
    return {"exhaustive": ExhaustiveEngine, "optuna": OptunaEngine}[name](ctx)


def measure_and_record(ctx: RunContext, engine: Engine, on_trial=lambda metrics: None) -> None:
    """The one loop: ask the engine, measure each proposal once, record it, tell the engine; until the
    engine is done, ctx.stop is set or search.timeout passes. Ctrl-C drops the proposals in flight
    (no trial is left RUNNING) and sets ctx.stop; finished trials stay stored."""
    timeout = ctx.spec.search.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: list = []
    try:
        while not ctx.stop and (deadline is None or time.monotonic() < deadline):
            pending = engine.ask()
            if not pending:
                return
            ctx.measurer.prefetch([p.config for p in pending])  # shared accuracy passes for a batch
            while pending and not ctx.stop and (deadline is None or time.monotonic() < deadline):
                proposal = pending[0]
                measured = ctx.measurer.measure(proposal.config)
                record_trial(ctx, measured, proposal.params, proposal.trial)
                pending.pop(0)
                engine.tell(proposal, measured)
                on_trial(measured.metrics)
    except KeyboardInterrupt:
        ctx.stop.append("interrupted")
    finally:
        for proposal in pending:
            if proposal.trial is not None:
                drop_trial(ctx, proposal.trial)
            engine.drop(proposal)


def _worker(spec_dict: dict, base_dir: str, seed: int) -> None:
    """One extra worker process: loads the model once, then runs the loop on the shared storage with
    its own sampler seed."""
    spec = RunSpec(**{**spec_dict, "base_dir": base_dir}).with_overrides(seed=seed)
    ctx = prepare(spec)
    measure_and_record(ctx, choose_engine(ctx))


def _search(ctx: RunContext, engine, progress: SearchProgress) -> None:
    def on_trial(metrics):
        progress.add(metrics)

    if isinstance(engine, Driver):
        engine.drive(lambda measured, params: (record_trial(ctx, measured, params), on_trial(measured.metrics)))
        return
    spec = ctx.spec
    workers = []
    if spec.search.workers > 1:
        mp = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/SQLite state
        for i in range(1, spec.search.workers):
            w = mp.Process(target=_worker, args=(spec.model_dump(), spec.base_dir, spec.search.seed + i))
            w.start()
            workers.append(w)
    try:
        measure_and_record(ctx, engine, on_trial)
    finally:
        for w in workers:
            w.join()


def run(spec: RunSpec, progress: bool = True, console=None) -> RunSummary:
    """Search, finish and write the results folder."""
    from rich.console import Console

    console = console or Console(stderr=True)
    ctx = prepare(spec)
    engine = choose_engine(ctx)
    before = len(trials.records(ctx.study, spec))
    logging.getLogger("optuna").setLevel(logging.WARNING)
    interrupted = False
    with SearchProgress(ctx, engine.planned(), progress) as bar:
        try:
            _search(ctx, engine, bar)
        except KeyboardInterrupt:
            interrupted = True
    interrupted = interrupted or bool(ctx.stop)
    recs = trials.records(ctx.study, spec)
    # Interrupted: keep the re-timed figures earlier complete runs stored, but re-time nothing now.
    final = (
        retime_finalists(ctx, recs) if recs and not interrupted else dict(ctx.study.user_attrs.get("final_metrics", {}))
    )
    recs = trials.records(ctx.study, spec, final)
    summary = RunSummary(
        engine=engine.name,
        trials=len(recs),
        networks=len({r.config for r in recs}),
        new_trials=len(recs) - before,
        feasible=sum(r.feasible for r in recs),
        interrupted=interrupted,
        records=recs,
        front=front_of(recs, spec),
        notes=list(ctx.notes),
    )
    write_results(ctx, summary)
    print_summary(summary, spec, console)
    if interrupted:
        console.print(
            f"interrupted: {len(recs)} finished trials are kept in {spec.output_dir}; "
            f"run the same command again to resume"
        )
    return summary
