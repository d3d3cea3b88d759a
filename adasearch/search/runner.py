"""`adasearch run`: spec -> context -> engine proposals -> one measure-and-record loop -> re-timed
finalists -> results folder.

Running the same command again resumes from the storage: finished trials are kept and the engine
only adds what is missing. Ctrl-C (SIGINT) or SIGTERM at any point of the loop drops the trial in
flight, keeps every finished one, still writes the results folder, says how to resume, and exits
130 (SIGINT) or 143 (SIGTERM). With search.workers > 1 (optuna), the extra workers are processes
that run the same loop on the same storage; they are stopped with the run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time

from adasearch.errors import Terminated, UserError
from adasearch.measure.contention import ContentionMonitor, summary_lines
from adasearch.metrics import RUNTIME_ATOL, RUNTIME_FLAG
from adasearch.run_folder import STUDY_DB, RunFolder
from adasearch.search import trials
from adasearch.search.context import RunContext, drop_trial, prepare, record_trial, signals_deferred, storage_url
from adasearch.search.engines import model as model_engine
from adasearch.search.engines.base import Driver, Engine
from adasearch.search.engines.exhaustive import ExhaustiveEngine
from adasearch.search.engines.optuna import OptunaEngine
from adasearch.search.front import heldout
from adasearch.search.front.beyond_noise import front_of
from adasearch.search.front.finalists import retime_finalists
from adasearch.search.phases import HELDOUT, RETIMING, SEARCH, SETUP, PhaseClock
from adasearch.search.progress import SearchProgress
from adasearch.search.results import RunSummary, print_summary, write_results
from adasearch.search.storage import fail_leftover_retries
from adasearch.spec import RunSpec


def choose_engine(ctx: RunContext):
    """The spec's engine, or for `auto`: model when one process with the default sampler searches a space
    whose accuracy is enumerable and the spec times something; else exhaustive for small spaces searched
    that way; else optuna."""
    spec = ctx.spec
    name = spec.search.engine
    if name == "auto":
        small = ctx.space.size() <= spec.search.exhaustive_limit
        one = spec.search.workers == 1 and spec.search.sampler == "auto"
        if one and spec.needs_latency and model_engine.unusable(ctx) is None:
            name = "model"  # exact accuracy everywhere: only latency is unknown, and it is predicted then verified
        else:
            name = "exhaustive" if small and one else "optuna"
    if name == "model":
        return model_engine.ModelEngine(ctx)
    if name == "ray":
        from adasearch.search.engines.ray import RayEngine  # imports Ray only when asked for

        return RayEngine(ctx)
    return {"exhaustive": ExhaustiveEngine, "optuna": OptunaEngine}[name](ctx)


def _storage_failure(ctx: RunContext, error: Exception) -> UserError:
    """A storage that stopped accepting writes mid-run (a read-only or full disk, a lost database):
    one line, with the database's own reason (Optuna wraps it in "invalid data ... e.g. exceeding max
    length", which misleads on a full disk), and what is kept: nothing, when the default storage's file
    is gone (the results folder was deleted)."""
    from optuna.exceptions import StorageInternalError

    cause = error.__cause__ if isinstance(error, StorageInternalError) and error.__cause__ else error
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    url = storage_url(ctx.spec, ctx.spec.output_dir)
    if not ctx.spec.search.storage and not (ctx.spec.output_dir / STUDY_DB).is_file():
        return UserError(
            f"storage {url}: cannot record a trial ({first}); the storage file is gone (the results folder was "
            f"deleted during the run): its trials are lost; run the same command again to start over"
        )
    return UserError(
        f"storage {url}: cannot record a trial ({first}); the trials stored before are kept: fix the storage and "
        f"run the same command again to resume"
    )


def measure_and_record(ctx: RunContext, engine: Engine, on_trial=lambda metrics: None) -> None:
    """The one loop: ask the engine, measure each proposal once, record it, tell the engine; until the
    engine is done, ctx.stop is set or search.timeout passes. Ctrl-C or SIGTERM anywhere in it drops
    the proposals in flight (no trial is left RUNNING) and sets ctx.stop; finished trials stay stored.
    A storage that fails mid-run is one UserError."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    timeout = ctx.spec.search.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: list = []
    try:
        engine.start()
        while not ctx.stop and (deadline is None or time.monotonic() < deadline):
            with signals_deferred():  # a live trial from ask must reach `pending` (dropped below) before a signal acts
                pending = engine.ask()
            if not pending:
                return
            ctx.measurer.prefetch([p.config for p in pending])  # shared accuracy passes for a batch
            while pending and not ctx.stop and (deadline is None or time.monotonic() < deadline):
                proposal = pending[0]
                measured = ctx.measurer.measure(proposal.config, proposal.predicted)
                record_trial(ctx, measured, proposal.params, proposal.trial)
                pending.pop(0)
                engine.tell(proposal, measured)
                on_trial(measured.metrics)
    except KeyboardInterrupt as e:
        ctx.stop.append("SIGTERM" if isinstance(e, Terminated) else "SIGINT")
    except (SQLAlchemyError, OSError, StorageInternalError) as e:
        raise _storage_failure(ctx, e)
    finally:
        with signals_deferred():
            for proposal in pending:
                if proposal.trial is not None:
                    drop_trial(ctx, proposal.trial)
                engine.drop(proposal)


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (what containers and schedulers send) raises Terminated, a KeyboardInterrupt: the run
    stops as it does on Ctrl-C. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with(parent: int) -> None:
    """SIGTERM this worker when the run's process dies, even by kill -9 (which no handler sees): the
    worker then stops as on any SIGTERM, dropping its trial in flight. Linux asks the kernel
    (PR_SET_PDEATHSIG); elsewhere a thread watches the parent pid."""
    import ctypes
    import os
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() != parent:  # the run died before the request: it will never fire
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _worker(spec_dict: dict, base_dir: str, seed: int, parent: int) -> None:
    """One extra worker process: loads the model once, then runs the loop on the shared storage with
    its own sampler seed. It stops quietly on Ctrl-C (the whole process group gets it), on the SIGTERM
    the run sends it when it stops, and when the run's process dies."""
    try:
        with stop_on_sigterm():
            _die_with(parent)
            spec = RunSpec(**{**spec_dict, "base_dir": base_dir}).with_overrides(seed=seed)
            ctx = prepare(spec)
            measure_and_record(ctx, choose_engine(ctx))
    except KeyboardInterrupt:
        pass


def _search(ctx: RunContext, engine, progress: SearchProgress) -> None:
    def on_trial(metrics):
        progress.add(metrics)

    if isinstance(engine, Driver):
        engine.drive(lambda measured, params: (record_trial(ctx, measured, params), on_trial(measured.metrics)))
        return
    spec = ctx.spec
    workers = []
    try:
        # A resumed run whose budget is met already needs no worker (each would load the model for nothing).
        if spec.search.workers > 1 and ctx.distinct_measured() < engine.planned():
            mp = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/SQLite state
            for i in range(1, spec.search.workers):
                args = (spec.model_dump(), spec.base_dir, spec.search.seed + i, os.getpid())
                w = mp.Process(target=_worker, args=args)
                w.start()
                workers.append(w)
        measure_and_record(ctx, engine, on_trial)
    finally:
        with signals_deferred():
            for w in workers:
                if ctx.stop:  # the run stops: so do its workers (each finishes or drops its trial)
                    w.terminate()
                w.join(timeout=120)
                if w.is_alive():
                    w.kill()
                    w.join()


def runtime_notes(evaluator, figures: dict) -> list:
    """Summary lines for a runtime other than eager: what building cost, and finalists whose logits left eager's."""
    runtime = evaluator.runtime
    if runtime.name == "eager":
        return []
    stats = runtime.stats()
    whole = f" ({stats['whole_compiles']} compiled whole)" if "whole_compiles" in stats else ""
    notes = [
        f"runtime {runtime.name}: {stats['builds']} forwards{whole} and {stats['part_builds']} parts built in "
        f"{stats['build_s']:.1f} s"
    ]
    if stats.get("timing_groups", 1) > 1:
        notes.append(
            f"runtime {runtime.name}: its forwards did not all fit in memory at once, so one timing ran in up to "
            f"{stats['timing_groups']} groups one after another; configs of different groups are compared by their "
            "intervals, not paired"
        )
    flagged = [k for k, f in figures.items() if f.get(RUNTIME_FLAG)]
    if flagged:
        atol = RUNTIME_ATOL[evaluator.hardware.dtype]
        notes.append(
            f"{len(flagged)} of {len(figures)} finalists' logits leave eager's by more than {atol:g} under "
            f"{runtime.name} (column {RUNTIME_FLAG}); their held-out figures are the runtime's"
        )
    return notes


def run(spec: RunSpec, progress: bool = True, console=None, overwrite: bool = False) -> RunSummary:
    """Search, finish and write the results folder. overwrite: replace another or an earlier run's
    results in spec.output_dir (otherwise refused)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with stop_on_sigterm(), RunFolder(spec.output_dir).locked():  # one run at a time writes a folder
        clock, started = PhaseClock(), time.perf_counter()
        with clock.phase(SETUP):
            ctx = prepare(spec, overwrite=overwrite)
        ctx.phases = clock
        monitor = ContentionMonitor(spec.search.quiet_wait)
        monitor.watch(ctx.measurer.evaluator)  # every timing window of this process: how busy the machine was
        engine_name, first_new = spec.search.engine, len(ctx.study.trials)  # trial numbers from here are this run's
        figures, guarantees = {}, {}
        try:
            with clock.phase(SETUP):
                engine = choose_engine(ctx)
            engine_name = engine.name
            logging.getLogger("optuna").setLevel(logging.WARNING)
            with SearchProgress(ctx, engine.planned(), progress) as bar:
                with clock.phase(SEARCH):
                    _search(ctx, engine, bar)
                if not ctx.stop and ctx.distinct_measured() >= engine.planned():
                    fail_leftover_retries(ctx.study)  # budget met: a re-queued config no process will pop
                recs = [] if ctx.stop else trials.records(ctx.study, spec)
                if recs:
                    with clock.phase(RETIMING):  # on the bar: its rounds, and the finalists' whole compiles
                        retime_finalists(ctx, recs)
            if not ctx.stop:
                if recs:
                    final = trials.retimed_figures(ctx.study)
                    recs = trials.records(ctx.study, spec, final)
                    # An engine that predicted timings may measure more when the re-timing disagrees.
                    while not ctx.stop and isinstance(engine, Engine) and engine.retimed(recs):
                        with SearchProgress(ctx, engine.planned(), progress) as bar:
                            with clock.phase(SEARCH):
                                _search(ctx, engine, bar)
                            if not ctx.stop:  # Ctrl-C while measuring more: keep what is stored, re-time nothing
                                with clock.phase(RETIMING):
                                    retime_finalists(ctx, trials.records(ctx.study, spec, final), only_new=True)
                        if ctx.stop:
                            break
                        final = trials.retimed_figures(ctx.study)
                        recs = trials.records(ctx.study, spec, final)
                    if not ctx.stop:
                        candidates = [r for r in recs if str(r.number) in final]
                        with clock.phase(HELDOUT):
                            figures, guarantees = heldout.evaluate(ctx, front_of(recs, spec), candidates)
        except KeyboardInterrupt as e:  # outside the loop: choosing the engine, or re-timing finalists
            ctx.stop.append("SIGTERM" if isinstance(e, Terminated) else "SIGINT")
        finally:
            for close in ctx.closers:
                close()
        interrupted = bool(ctx.stop)
        ctx.notes.extend(runtime_notes(ctx.measurer.evaluator, figures))
        total_s = time.perf_counter() - started  # to the results' writing, which the note cannot wait for
        ctx.notes.append(clock.note(total_s))
        with signals_deferred():
            # Interrupted: keep the re-timed figures stored so far (this run's or earlier runs'), re-time nothing.
            final = trials.retimed_figures(ctx.study)
            recs = trials.records(ctx.study, spec, final)
            for r in recs:  # held-out figures belong to the config, like re-timed ones
                r.metrics.update(heldout.public(figures.get(trials.config_key(r.config), {})))
            summary = RunSummary(
                engine=engine_name,
                trials=len(recs),
                networks=len({r.config for r in recs}),
                new_trials=sum(r.number >= first_new for r in recs),
                feasible=sum(r.feasible for r in recs),
                interrupted=interrupted,
                stopped_by=ctx.stop[0] if ctx.stop else None,
                records=recs,
                front=front_of(recs, spec),
                notes=list(ctx.notes),
                guarantees=guarantees,
                heldout_samples=len(ctx.measurer.evaluator.heldout or ()),
                contention=monitor.summary(),
                time_s={"total": round(total_s, 1), **{k: round(v, 1) for k, v in clock.seconds.items()}},
            )
            write_results(ctx, summary)
            print_summary(summary, spec, console)
            for line in summary_lines(summary.contention, summary.front, summary.records):
                console.print(line, highlight=False, soft_wrap=True)
            if interrupted:
                console.print(
                    f"stopped by {summary.stopped_by}: {len(recs)} finished trials are kept in {spec.output_dir}; "
                    f"run the same command again to resume"
                )
    return summary
