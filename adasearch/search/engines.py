"""Search engines behind one small interface: `engine.run(ctx)` adds trials to ctx.study.

- exhaustive: every distinct network of the space; with the shared accuracy engine this is the
  exact front, and auto picks it for spaces up to search.exhaustive_limit configs.
- optuna: a multi-objective sampler (nsga2, tpe, gp, random, bruteforce) with constraints given to
  it through trial.set_constraint; N workers are N processes on one storage.
- ray: Ray Tune driving OptunaSearch (adasearch.search.ray_engine).
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from typing import Callable, Optional

from adasearch.config import DeploymentConfig
from adasearch.search import trials as T
from adasearch.search.space import SearchSpace
from adasearch.spec import RunSpec


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
        todo = [c for c in {self.space.canonical(c) for c in configs} if not self.reusable(T.config_key(c))]
        if todo:
            self.evaluator.accuracy.measure(todo)

    def measure(self, config: DeploymentConfig):
        """-> (canonical config, key, metrics dict, reused: bool)."""
        canon = self.space.canonical(config)
        key = T.config_key(canon)
        if self.reusable(key):
            return canon, key, self.known[key], True
        m = self.evaluator.measure_accuracy_and_cost([canon])[canon]
        if self.spec.needs_latency:
            self.evaluator.time(m, canon, memory=self.spec.needs_memory)
        metrics = {k: v for k, v in m.metrics().items() if v is not None}
        self.known[key] = metrics
        return canon, key, metrics, False


@dataclass
class RunContext:
    spec: RunSpec
    space: SearchSpace
    study: object  # optuna.Study
    measurer: Measurer
    on_trial: Callable[..., None] = lambda metrics=None: None
    stop: list = field(default_factory=list)  # non-empty: stop after the current trial


class ExhaustiveEngine:
    name = "exhaustive"

    def run(self, ctx: RunContext) -> None:
        import optuna

        unique = ctx.space.unique()  # canonical config -> params
        todo = {c: p for c, p in unique.items() if not ctx.measurer.reusable(T.config_key(c))}
        ctx.measurer.prefetch(todo)
        distributions = ctx.space.distributions()
        for config, params in todo.items():
            if ctx.stop:
                return
            canon, key, metrics, _ = ctx.measurer.measure(config)
            trial = optuna.trial.create_trial(params=ctx.space.encode_params(params), distributions=distributions,
                                              values=T.objective_values(ctx.spec, metrics))
            T.attach(trial, ctx.spec, canon, key, metrics)
            ctx.study.add_trial(trial)
            ctx.on_trial(metrics)

    def planned(self, ctx: RunContext) -> int:
        return len(ctx.space.unique())


def make_sampler(name: str, seed: int, trials: int):
    import optuna

    if name in ("auto", "tpe"):
        # TPE is the most sample-efficient of these at the budgets people give (tens to hundreds).
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 5)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, trials // 4)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.BruteForceSampler(seed=seed)


def optuna_objective(ctx: RunContext):
    def objective(trial):
        import optuna

        config = ctx.space.suggest(trial)
        try:
            canon, key, metrics, _ = ctx.measurer.measure(config)
        except KeyboardInterrupt:
            # Ctrl-C mid-trial: drop this one trial quietly (no traceback) and stop after it.
            ctx.stop.append("interrupted")
            raise optuna.TrialPruned("interrupted by the user")
        return T.attach(trial, ctx.spec, canon, key, metrics)

    return objective


class OptunaEngine:
    name = "optuna"

    def run(self, ctx: RunContext) -> None:
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        spec = ctx.spec
        if completed(ctx.study) >= spec.search.trials:
            return  # resuming a finished run: Optuna would still start one more trial before stopping
        workers = []
        if spec.search.workers > 1:
            mp = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/SQLite state
            for i in range(1, spec.search.workers):
                w = mp.Process(target=_worker, args=(spec.model_dump(), spec.base_dir, spec.search.seed + i))
                w.start()
                workers.append(w)

        def callback(study, trial):
            ctx.on_trial(trial.user_attrs.get("metrics"))
            if ctx.stop:
                study.stop()

        try:
            ctx.study.optimize(optuna_objective(ctx), n_trials=None, timeout=spec.search.timeout,
                               callbacks=[MaxTrialsCallback(spec.search.trials, states=(TrialState.COMPLETE,)),
                                          callback], catch=())
        finally:
            for w in workers:
                w.join()

    def planned(self, ctx: RunContext) -> int:
        return ctx.spec.search.trials


def _worker(spec_dict: dict, base_dir: str, seed: int) -> None:
    """One extra worker process: loads the model once, then samples from the shared storage."""
    from adasearch.search.runner import prepare

    spec = RunSpec(**{**spec_dict, "base_dir": base_dir})
    spec = spec.with_overrides(seed=seed)
    _optimize_alone(prepare(spec))


def completed(study) -> int:
    """Finished trials in the storage: what a resumed run already has."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _optimize_alone(ctx: RunContext) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if completed(ctx.study) >= ctx.spec.search.trials:
        return

    ctx.study.optimize(optuna_objective(ctx), n_trials=None, timeout=ctx.spec.search.timeout,
                       callbacks=[MaxTrialsCallback(ctx.spec.search.trials, states=(TrialState.COMPLETE,))])


ENGINES = {"exhaustive": ExhaustiveEngine, "optuna": OptunaEngine}


def choose_engine(spec: RunSpec, space: SearchSpace):
    name = spec.search.engine
    if name == "auto":
        small = space.size() <= spec.search.exhaustive_limit
        name = "exhaustive" if small and spec.search.workers == 1 and spec.search.sampler == "auto" else "optuna"
    if name == "ray":
        from adasearch.search.ray_engine import RayEngine

        return RayEngine()
    return ENGINES[name]()
