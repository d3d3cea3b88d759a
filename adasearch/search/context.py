"""What a worker needs to measure and record: the run's context, below every engine and the runner.

- `prepare(spec)` loads model, data, space and (optionally) the storage into a RunContext;
- `Measurer` measures a config once (canonical form, then the storage's and this process's memo);
- `record_trial` is the only writer of trials into the study, whichever engine proposed them;
- `open_study` and `make_sampler` are the Optuna side of it.

engines.py, ray_engine.py and runner.py import this module; it imports none of them, so the
package's import graph has no cycle (a test parses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

from adasearch.config import DeploymentConfig
from adasearch.errors import Terminated, UserError
from adasearch.measure.evaluator import TARGET_KEYS
from adasearch.run_folder import STUDY_DB, RunFolder
from adasearch.search import trials
from adasearch.search.phases import PhaseClock
from adasearch.search.space import SearchSpace
from adasearch.spec import RunSpec

LOCAL = "local"  # measured_on of a trial measured in this process (not on a Ray cluster node)


class Measured(NamedTuple):
    config: DeploymentConfig  # canonical form
    key: str  # trials.config_key of it
    metrics: dict
    reused: bool  # True: figures of an earlier measurement of the same network
    measured_on: str = LOCAL
    timing: str = trials.TIMED  # where its timed figures come from: trials.TIMED or trials.PREDICTED


class Measurer:
    """Measures a config once: canonical form first, then the storage's and this process's memo."""

    def __init__(self, evaluator, space: SearchSpace, spec: RunSpec, known: Optional[dict] = None,
                 predicted: Optional[set] = None):  # fmt: skip
        self.evaluator, self.space, self.spec = evaluator, space, spec
        self.known = dict(known or {})
        self.predicted = set(predicted or ())  # keys whose timed figures in `known` are predictions
        self.accept_predicted = False  # engine: model sets it: its own predictions stand for its networks

    def reusable(self, key: str) -> bool:
        """Stored metrics can stand for a new trial only if they hold every metric this spec uses
        (a resumed run may have added a latency objective or constraint since they were measured), and
        timed figures that were predicted (engine: model) stand only for the engine that predicts."""
        m = self.known.get(key)
        if m is None or any(m.get(name) is None for name in self.spec.used_metrics):
            return False
        return key not in self.predicted or self.accept_predicted or not self.spec.needs_latency

    def count(self) -> int:
        """Networks whose stored figures this run can use (not those timed on other hardware)."""
        return sum(self.reusable(key) for key in self.known)

    def prefetch(self, configs) -> None:
        """Accuracy of many configs in one call: they share anytime passes."""
        todo = [c for c in {self.space.canonical(c) for c in configs} if not self.reusable(trials.config_key(c))]
        if todo:
            self.evaluator.accuracy.measure(todo)

    def measure(self, config: DeploymentConfig, predicted: Optional[dict] = None) -> Measured:
        """Accuracy and MACs, and the timed figures: timed now, or `predicted` ones (engine: model,
        whose finalists the runner re-times)."""
        canon = self.space.canonical(config)
        key = trials.config_key(canon)
        if self.reusable(key):
            timing = trials.PREDICTED if key in self.predicted else trials.TIMED
            return Measured(canon, key, self.known[key], True, timing=timing)
        m = self.evaluator.measure_accuracy_and_cost([canon])[canon]
        if self.spec.needs_latency and predicted is None:
            self.evaluator.time(m, canon, memory=self.spec.needs_memory)
        metrics = {k: v for k, v in m.metrics().items() if v is not None}
        metrics.update(predicted or {})
        if predicted:
            self.predicted.add(key)
            self.known[key] = metrics
            return Measured(canon, key, metrics, False, timing=trials.PREDICTED)
        self.predicted.discard(key)
        self.known[key] = metrics
        return Measured(canon, key, metrics, False)


@dataclass
class RunContext:
    spec: RunSpec
    space: SearchSpace
    study: object  # optuna.Study; None in a Ray worker, which never opens the storage
    measurer: Measurer
    fingerprint: dict = field(default_factory=dict)  # what the run's figures depend on (run_fingerprint)
    stop: list = field(default_factory=list)  # non-empty: stop after the current trial
    notes: list = field(default_factory=list)  # what the summary should say (e.g. the sampler ran dry)
    status: object = lambda description, done, total: None  # progress of a step before proposals (progress.py)
    # How finalists are re-timed: (configs, budget_s, seed) -> {config: figures}. None: the evaluator,
    # in this process; the ray engine on a cluster re-times on a target node instead.
    retimer: object = None
    closers: list = field(default_factory=list)  # called when the run ends (e.g. the ray engine's Ray)
    # engine: model: its latency model's reference configs, re-timed with the finalists, and
    # reanchor({reference: figures}) -> (config -> its predicted columns, calibrated on those figures).
    anchors: list = field(default_factory=list)
    reanchor: object = None
    phases: PhaseClock = field(default_factory=PhaseClock)  # where the run's wall time goes (run.yaml, summary)

    def distinct_measured(self) -> int:
        """Distinct networks measured so far (the trial budget counts these, not repeats). With several
        workers on one storage, other workers' trials count too, so the storage is read again."""
        if self.study is not None and self.spec.search.workers > 1:
            known, predicted = trials.measured_keys(self.study)
            self.measurer.known.update(known)
            self.measurer.predicted |= predicted
        return self.measurer.count()


@contextlib.contextmanager
def signals_deferred():
    """Work that a Ctrl-C or SIGTERM must not cut in half (a storage write, the clean-up after a first
    signal): signals wait until it is done, then take effect. Only the main thread can install handlers;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    handlers = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if caught:
            raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()


def record_trial(ctx: RunContext, measured: Measured, params: dict, trial=None) -> None:
    """Store one measured config as a completed trial of the run's study: the only writer of trials.

    params: the flat parameters in the space's encoding (what Optuna samples and trials.csv shows).
    trial: a live trial from study.ask() (told here), or None for a new frozen trial (added here).
    A Ctrl-C or SIGTERM waits until it is done: a storage write cut in half can leave the session unable
    to mark the trial failed, and the trial RUNNING for good."""
    with signals_deferred():
        _record(ctx, measured, params, trial)


def _record(ctx: RunContext, measured: Measured, params: dict, trial=None) -> None:
    import optuna

    values = trials.objective_values(ctx.spec, measured.metrics)
    constraints = trials.constraint_list(ctx.spec, measured.metrics)
    hardware = ctx.fingerprint.get("hardware") if ctx.spec.needs_latency else None
    if trial is None:
        system = {trials.CONSTRAINTS: constraints} if constraints else {}
        trial = optuna.trial.create_trial(
            params=params, distributions=ctx.space.distributions(), values=values, system_attrs=system
        )
        trials.attach(trial, measured, hardware)
        ctx.study.add_trial(trial)
    else:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            trials.attach(trial, measured, hardware)
            if constraints:  # where Optuna's own constraints_func puts them; samplers and the dashboard read it
                ctx.study._storage.set_trial_system_attr(trial._trial_id, trials.CONSTRAINTS, constraints)
            ctx.study.tell(trial, values)
        except (UpdateFinishedTrialError, ValueError) as e:
            # Another process failed this trial as stale (this one was paused past the heartbeat's grace):
            # the measurement is still good, so it is stored as a trial of its own.
            if "finished" not in str(e).lower() and "fail" not in str(e).lower():
                raise
            return _record(ctx, measured, dict(trial.params))
    if not ctx.measurer.reusable(measured.key) or measured.timing == trials.TIMED:  # new, or better figures
        ctx.measurer.known[measured.key] = measured.metrics
        if measured.timing == trials.TIMED:
            ctx.measurer.predicted.discard(measured.key)


def drop_trial(ctx: RunContext, trial) -> None:
    """A live trial that will not be measured (Ctrl-C, a stop): marked failed, so no RUNNING trial is left."""
    from optuna.trial import TrialState

    try:
        ctx.study.tell(trial, state=TrialState.FAIL)
    except Exception:  # already finished, or the storage is gone: nothing left to clean
        pass


def make_sampler(name: str, seed: int, budget: int):
    import optuna

    if name in ("auto", "tpe"):
        # TPE is the most sample-efficient of these at the budgets people give (tens to hundreds).
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, budget // 5)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, budget // 4)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.BruteForceSampler(seed=seed)


def storage_url(spec: RunSpec, out_dir: Path, masked: bool = True) -> str:
    """The run's storage URL; masked (for messages, run.yaml and logs): its password replaced by ***."""
    from adasearch.search.storage import mask_url

    url = spec.search.storage or f"sqlite:///{(out_dir / STUDY_DB).resolve()}"
    return mask_url(url) if masked else url


def open_study(spec: RunSpec, out_dir: Path, overwrite: bool = False):
    """The run's study in its storage (created if missing). overwrite=True deletes a study of the
    same name first."""
    import optuna

    from adasearch.search.storage import fail_stale_trials, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(spec, out_dir)  # masked: what the messages show
    storage = open_storage(storage_url(spec, out_dir, masked=False), spec.search.workers)  # UserError if it fails
    directions = [o.direction for o in spec.objectives]
    sampler = make_sampler(spec.search.sampler, spec.search.seed, spec.search.trials)
    if overwrite and spec.run_name in {s.study_name for s in storage.get_all_studies()}:
        optuna.delete_study(study_name=spec.run_name, storage=storage)
    study = optuna.create_study(
        study_name=spec.run_name, storage=storage, directions=directions, load_if_exists=True, sampler=sampler
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise UserError(
            f"storage {url!r} already holds study {spec.run_name!r} with directions {stored}; "
            f"the spec asks for {directions}: use another output/storage or name"
        )
    # Directions alone do not tell accuracy/gmacs from accuracy/latency: the stored values would be
    # read as the wrong metric. Record the objectives' names and refuse a resume that changes them.
    metrics = [o.metric for o in spec.objectives]
    recorded = study.user_attrs.get("objectives")
    if recorded is None:
        study.set_user_attr("objectives", metrics)
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)  # optuna-dashboard shows the objectives by name
    elif recorded != metrics:
        raise UserError(
            f"storage {url!r} already holds study {spec.run_name!r} for objectives {recorded}; "
            f"the spec asks for {metrics}: use another output/storage or name"
        )
    study.set_user_attr("constraints", list(spec.constraints))  # names of the trials' constraint lists
    fail_stale_trials(study)  # trials of a killed process (PostgreSQL's heartbeat): failed, their configs re-queued
    return study


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_fingerprint(evaluator, space: SearchSpace, spec: RunSpec) -> dict:
    """What a run's figures depend on. Accuracy and MACs: the weights, the data (its samples, so the
    limit and seed of a subsample too), the space and the dtype. Timed figures also: the hardware
    (device, its name, torch, threads, batch size, dtype)."""
    env = evaluator.environment()
    hardware = {k: env.get(k) for k in TARGET_KEYS}
    return {
        "weights": evaluator.accuracy.model_fingerprint(),
        "data": _digest([evaluator.data.name, evaluator.data.fingerprint()]),
        "space": _digest(space.parameters()),
        "dtype": spec.hardware.dtype,
        "hardware": _digest(hardware),
        "hardware_description": hardware,
    }


SAME_RUN = {"weights": "model weights", "data": "data (source, limit or seed)", "space": "search space",
            "dtype": "dtype"}  # fmt: skip


def adopt_fingerprint(study, fingerprint: dict, url: str) -> list:
    """Record the fingerprint with a new study; on resume, refuse one that differs in anything but the
    hardware. A hardware change is adopted: trials timed elsewhere keep their accuracy and MACs, and
    their timed figures are measured again (trials.stored_metrics). Returns notes for the summary."""
    recorded = study.user_attrs.get("fingerprint")
    if recorded is None:  # a new study (or one from before fingerprints: it is taken as this run's)
        study.set_user_attr("fingerprint", fingerprint)
        return []
    changed = [key for key in SAME_RUN if recorded.get(key) != fingerprint[key]]
    if "dtype" in changed and "weights" in changed:  # the weights are hashed as cast: a dtype change alone changes it
        changed.remove("weights")
    changed = [SAME_RUN[key] for key in changed]
    if changed:
        raise UserError(
            f"storage {url!r} holds a run measured with other {', '.join(changed)}; resuming would mix their "
            f"figures: use another --output (or search.storage), or --overwrite to start this run over"
        )
    if recorded.get("hardware") == fingerprint["hardware"]:
        return []
    study.set_user_attr("fingerprint", fingerprint)
    trials.store_retimed(study, {})  # re-timed on the old hardware: nothing of it is reused
    was, now = recorded.get("hardware_description", {}), fingerprint["hardware_description"]
    what = ", ".join(f"{k} {was.get(k)} -> {now.get(k)}" for k in now if was.get(k) != now.get(k))
    return [
        f"hardware changed since the stored trials ({what or 'unknown before'}): their timed figures are "
        f"measured again, their accuracy and MACs reused"
    ]


def _check_not_started_over(study, folder: RunFolder, url: str) -> None:
    """An empty storage next to a folder holding results means the storage was lost or replaced (a
    0-byte study.db, another storage URL): starting over would silently replace those results."""
    if study.trials or not folder.holds_trials():
        return
    raise UserError(
        f"{folder}: holds results, but storage {url!r} has no trials of this run (empty, replaced or lost); "
        f"refusing to start over on top of them: use another --output, or --overwrite to replace them"
    )


def prepare(spec: RunSpec, storage: bool = True, overwrite: bool = False) -> RunContext:
    """Load model, data and space, and open the storage (unless storage=False: a Ray worker measures
    and returns, and only the driver writes). overwrite=True replaces a results folder and study of
    another or an earlier run; otherwise such a folder is refused in one line."""
    from adasearch.measure.environment import resolve_device, resolve_dtype
    from adasearch.measure.evaluator import Hardware, build_evaluator
    from adasearch.runtimes import RUNTIME_CLASSES, check_runtime

    where = spec.spec_file or "spec"
    try:
        device = resolve_device(spec.hardware.device)  # this machine's devices: before any loading
    except UserError as e:
        raise UserError(f"{where}: hardware.device: {e}")
    try:
        check_runtime(spec.hardware.runtime, device, resolve_dtype(spec.hardware.dtype))
    except UserError as e:
        raise UserError(f"{where}: hardware.runtime: {e}")
    builtin = spec.data.source == "digits" or spec.data.source.startswith("digits:")
    evaluator = build_evaluator(
        spec.model if spec.model == "demo" else spec.resolve(spec.model),
        spec.data.source if builtin else spec.resolve(spec.data.source),  # e.g. digits_small.npz is a file
        Hardware(**spec.hardware.model_dump(exclude={"ray_resource"})),
        limit=spec.data.limit,
        data_seed=spec.data.seed,
        data_key="data.source",
        latency_budget_s=spec.search.latency_budget_s,
        holdout=spec.data.holdout,
    )
    space = SearchSpace.load(spec.search.space, evaluator.model.cfg, Path(spec.base_dir))
    taus = [v for v in space.knobs["depth_tau"].values if v is not None] if "depth_tau" in space.knobs else []
    if taus and RUNTIME_CLASSES[spec.hardware.runtime].static_only and spec.needs_latency:
        raise UserError(
            f"{where}: hardware.runtime: {spec.hardware.runtime} runs static configs only, but space "
            f"{space.name!r} has depth_tau values {taus}; allowed: a space without depth_tau, or runtime eager, "
            f"compile or cudagraph"
        )
    fingerprint = run_fingerprint(evaluator, space, spec)
    study, notes = None, []
    if storage:
        folder = RunFolder(spec.output_dir).create()
        if overwrite:
            folder.clear(keep_storage=bool(spec.search.storage))
        else:
            folder.claim(spec.run_name)
        study = open_study(spec, folder.path, overwrite=overwrite)
        url = storage_url(spec, folder.path)
        _check_not_started_over(study, folder, url)
        notes = adopt_fingerprint(study, fingerprint, url)
    known, predicted = trials.measured_keys(study) if study is not None else ({}, set())
    ctx = RunContext(spec, space, study, Measurer(evaluator, space, spec, known, predicted), fingerprint=fingerprint)
    ctx.notes.extend(notes)
    return ctx
