"""What a worker needs to measure and record: the run's context, below every engine and the runner.

- `prepare(spec)` loads model, data, space and (optionally) the storage into a RunContext;
- `Measurer` measures a config once (canonical form, then the storage's and this process's memo);
- `record_trial` is the only writer of trials into the study, whichever engine proposed them;
- `open_study` and `make_sampler` are the Optuna side of it.

engines.py, ray_engine.py and runner.py import this module; it imports none of them, so the
package's import graph has no cycle (a test parses it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.run_folder import RunFolder
from adasearch.search import trials
from adasearch.search.space import SearchSpace
from adasearch.spec import RunSpec

LOCAL = "local"  # measured_on of a trial measured in this process (not on a Ray cluster node)


class Measured(NamedTuple):
    config: DeploymentConfig  # canonical form
    key: str  # trials.config_key of it
    metrics: dict
    reused: bool  # True: figures of an earlier measurement of the same network
    measured_on: str = LOCAL


class Measurer:
    """Measures a config once: canonical form first, then the storage's and this process's memo."""

    def __init__(self, evaluator, space: SearchSpace, spec: RunSpec, known: Optional[dict] = None):
        self.evaluator, self.space, self.spec = evaluator, space, spec
        self.known = dict(known or {})

    def reusable(self, key: str) -> bool:
        """Stored metrics can stand for a new trial only if they hold every metric this spec uses
        (a resumed run may have added a latency objective or constraint since they were measured)."""
        m = self.known.get(key)
        return m is not None and all(m.get(name) is not None for name in self.spec.used_metrics)

    def prefetch(self, configs) -> None:
        """Accuracy of many configs in one call: they share anytime passes."""
        todo = [c for c in {self.space.canonical(c) for c in configs} if not self.reusable(trials.config_key(c))]
        if todo:
            self.evaluator.accuracy.measure(todo)

    def measure(self, config: DeploymentConfig) -> Measured:
        canon = self.space.canonical(config)
        key = trials.config_key(canon)
        if self.reusable(key):
            return Measured(canon, key, self.known[key], True)
        m = self.evaluator.measure_accuracy_and_cost([canon])[canon]
        if self.spec.needs_latency:
            self.evaluator.time(m, canon, memory=self.spec.needs_memory)
        metrics = {k: v for k, v in m.metrics().items() if v is not None}
        self.known[key] = metrics
        return Measured(canon, key, metrics, False)


@dataclass
class RunContext:
    spec: RunSpec
    space: SearchSpace
    study: object  # optuna.Study; None in a Ray worker, which never opens the storage
    measurer: Measurer
    stop: list = field(default_factory=list)  # non-empty: stop after the current trial
    notes: list = field(default_factory=list)  # what the summary should say (e.g. the sampler ran dry)

    def distinct_measured(self) -> int:
        """Distinct networks measured so far (the trial budget counts these, not repeats). With several
        workers on one storage, other workers' trials count too, so the storage is read again."""
        if self.study is not None and self.spec.search.workers > 1:
            self.measurer.known.update(trials.measured_keys(self.study))
        return len(self.measurer.known)


def record_trial(ctx: RunContext, measured: Measured, params: dict, trial=None) -> None:
    """Store one measured config as a completed trial of the run's study: the only writer of trials.

    params: the flat parameters in the space's encoding (what Optuna samples and trials.csv shows).
    trial: a live trial from study.ask() (told here), or None for a new frozen trial (added here)."""
    import optuna

    values = trials.objective_values(ctx.spec, measured.metrics)
    if trial is None:
        trial = optuna.trial.create_trial(params=params, distributions=ctx.space.distributions(), values=values)
        trials.attach(trial, ctx.spec, measured)
        ctx.study.add_trial(trial)
    else:
        trials.attach(trial, ctx.spec, measured)
        ctx.study.tell(trial, values)
    ctx.measurer.known.setdefault(measured.key, measured.metrics)


def drop_trial(ctx: RunContext, trial) -> None:
    """A live trial that will not be measured (Ctrl-C, a stop): marked failed, so no RUNNING trial is left."""
    from optuna.trial import TrialState

    try:
        ctx.study.tell(trial, state=TrialState.FAIL)
    except Exception:  # already finished, or the storage is gone: nothing left to clean
        pass


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


def open_study(spec: RunSpec, out_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = spec.search.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    try:
        storage = _rdb_storage(url)
    except Exception as e:
        raise UserError(
            f"search.storage: cannot open {url!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"allowed: an Optuna storage URL such as sqlite:///path/study.db"
        )
    directions = [o.direction for o in spec.objectives]
    sampler = make_sampler(spec.search.sampler, spec.search.seed, spec.search.trials)
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
    elif recorded != metrics:
        raise UserError(
            f"storage {url!r} already holds study {spec.run_name!r} for objectives {recorded}; "
            f"the spec asks for {metrics}: use another output/storage or name"
        )
    return study


def prepare(spec: RunSpec, storage: bool = True) -> RunContext:
    """Load model, data and space, and open the storage (unless storage=False: a Ray worker measures
    and returns, and only the driver writes)."""
    from adasearch.measure.evaluator import Hardware, build_evaluator

    builtin = spec.data.source == "digits" or spec.data.source.startswith("digits:")
    evaluator = build_evaluator(
        spec.model if spec.model == "demo" else spec.resolve(spec.model),
        spec.data.source if builtin else spec.resolve(spec.data.source),  # e.g. digits_small.npz is a file
        Hardware(**spec.hardware.model_dump()),
        limit=spec.data.limit,
        data_seed=spec.data.seed,
        data_key="data.source",
        latency_budget_s=spec.search.latency_budget_s,
    )
    space = SearchSpace.load(spec.search.space, evaluator.model.cfg, Path(spec.base_dir))
    study = None
    if storage:
        study = open_study(spec, RunFolder(spec.output_dir).create().path)
    known = trials.measured_keys(study) if study is not None else {}
    return RunContext(spec, space, study, Measurer(evaluator, space, spec, known))
