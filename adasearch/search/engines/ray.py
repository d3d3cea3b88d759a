"""The ray engine: Ray Tune drives Optuna's multi-objective sampler over N worker processes.

Each Tune trial runs in a worker process that loads the model once (a per-process cache, with Tune
reusing its actors), measures the sampled config and reports its figures. A worker never opens the
study: on a cluster it would be another machine's file. The driver records every reported result
through context.record_trial, like the other engines, so the Pareto set, resumption and reports read
one storage whichever engine ran. Each trial records the Ray node that measured it (measured_on),
never a hostname.

Timing on the target: `hardware.ray_resource: NAME` names a Ray custom resource that marks the
target nodes (`ray start ... --resources '{"NAME": 1}'`). When the spec times anything (a latency,
throughput or memory metric), every trial then asks for one whole unit of it besides its CPU, so it
runs only on a node that has it, and a node advertising N units runs at most N timed trials at once:
one unit per node (the honest default) times one trial at a time, since trials timed side by side on
one machine slow each other down. A spec that times nothing (accuracy, MACs) asks for no resource:
its trials run on any node. Joining a cluster (search.ray_address) where no live node has a whole
unit of the resource fails at once, in one line listing the resources the cluster has, rather than
leaving Tune waiting for a node that never comes.

Without a cluster (the local Ray this engine starts), this machine is the target: the local Ray
advertises search.workers units of the resource, so a spec with ray_resource runs exactly as it does
without it (search.workers concurrent trials). Trials measured in the local Ray record its node id.

On a cluster (search.ray_address) with hardware.ray_resource, the Pareto candidates' longer
re-timing (front/finalists.py) runs there too: each round is one Ray task holding a unit of the resource, so
it runs on a target node, which times the candidates interleaved and returns the figures; the summary
names the node. The run's hardware fingerprint (run.yaml's environment) still describes the driver's
machine.

The model, data and space reach a worker on another node as absolute paths (the driver's), so the
nodes must see them at the same paths (a shared or copied folder; `demo` and `digits` ship with
the package). A worker never writes the results folder: only the driver does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.search.context import Measured, RunContext, make_sampler
from adasearch.search.engines.base import Driver
from adasearch.search.engines.ray_accuracy import distribute_passes, install_needed, worker_context
from adasearch.spec import RunSpec

# Unix socket paths are limited to 107 bytes, so Ray's session folder must have a short name;
# keeping it (and Tune's result files) in /tmp also keeps Ray out of $HOME and the results folder.
# Each run gets its own folder under this prefix and removes it afterwards: our storage, not Ray's
# session logs or Tune's checkpoints, is what a run keeps.
TEMP_PREFIX = "/tmp"
MODES = {"maximize": "max", "minimize": "min"}


class RayEngine(Driver):
    name = "ray"

    def drive(self, record) -> None:
        ctx = self.ctx
        todo = ctx.spec.search.trials - completed(ctx.study)  # resuming: only what the storage lacks
        on_target = bool(ctx.spec.search.ray_address and ctx.spec.hardware.ray_resource)
        if todo <= 0 and not on_target:
            return
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir=TEMP_PREFIX)  # about 17 bytes
        started = False

        def close():
            if started:
                import ray

                ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)

        try:
            started = _init_ray(ctx.spec, temp_dir)
            if todo > 0:
                _tune(ctx, todo, temp_dir, record, _target(ctx.spec))
            if on_target:  # the finalists' re-timing too runs on a target node; Ray stays up until the run ends
                ctx.retimer = _target_retimer(ctx)
        except BaseException:  # also Ctrl-C, which then reaches the runner: it keeps the finished trials
            close()
            raise
        if on_target:
            ctx.closers.append(close)
        else:
            close()

    def planned(self) -> int:
        return self.ctx.spec.search.trials


def completed(study) -> int:
    """Finished trials in the storage. Tune's num_samples is fixed when it starts, so on this engine
    repeats of a measured network count against search.trials (they cost no measuring)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _init_ray(spec: RunSpec, temp_dir: str) -> bool:
    """Start a local Ray on loopback, or join spec.search.ray_address. True when we started it."""
    address = spec.search.ray_address
    if address:
        _check_reachable(address)
    else:
        # Loopback only (Ray reads this flag on import; it means 127.0.0.1 on every OS), and no token
        # auth, which would read or write ~/.ray. Joining a cluster needs neither override.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    import ray

    if ray.is_initialized():  # someone else's Ray (a notebook, a script): use it, leave it running
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, ignore_reinit_error=True)
    if not address:
        # This machine is the target: as many units as workers, so ray_resource changes nothing here.
        resources = {spec.hardware.ray_resource: spec.search.workers} if spec.hardware.ray_resource else None
        ray.init(
            num_cpus=spec.search.workers, resources=resources, include_dashboard=False, _temp_dir=temp_dir, **quiet
        )
        return True
    try:
        ray.init(address=address, **quiet)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"search.ray_address: cannot join Ray at {address!r} ({type(e).__name__}: {first})")
    return True


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable GCS for many minutes; a TCP probe fails in seconds instead."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():  # e.g. 'auto': Ray itself fails fast when nothing runs
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"search.ray_address: cannot reach Ray at {address!r} ({e.strerror or e}); "
            f"allowed: host:port of a running Ray head, ray://host:port, or auto"
        )


def _target(spec: RunSpec) -> Optional[str]:
    """The custom resource every trial must hold (hardware.ray_resource when the spec times anything),
    checked against the live nodes of the Ray this process is connected to; None: run anywhere."""
    name = spec.hardware.ray_resource
    if not name or not spec.needs_latency:
        return None
    _require_resource(spec, name)
    return name


def _require_resource(spec: RunSpec, name: str) -> None:
    """A one-line UserError unless a live node of the connected Ray holds a whole unit of `name`."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if max((n.get("Resources", {}).get(name, 0) for n in nodes), default=0) >= 1:
        return
    have = sorted({k for n in nodes for k in n.get("Resources", {}) if not k.startswith("node:")})
    where = f"Ray at {spec.search.ray_address!r}" if spec.search.ray_address else "the running Ray"
    raise UserError(
        f"{spec.spec_file or 'spec'}: hardware.ray_resource: no node of {where} has a whole unit of {name!r} "
        f"(each timed trial holds one); it has: {', '.join(have) or 'nothing'}"
    )


def _tune(ctx: RunContext, todo: int, temp_dir: str, record, target: Optional[str] = None) -> None:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    # Ray's newer console output prints a banner even at verbose=0; the classic one stays silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune would move each trial into its own folder, where a relative storage URL names another file.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # Tune's own Ctrl-C handler ends the run quietly; the runner needs the KeyboardInterrupt.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    spec = ctx.spec
    searcher = OptunaSearch(
        metric=[o.metric for o in spec.objectives],
        mode=[MODES[o.direction] for o in spec.objectives],
        sampler=make_sampler(spec.search.sampler, spec.search.seed, spec.search.trials),
        storage=_history(ctx),
        study_name=spec.run_name,
    )
    # One choice per flat parameter, in the space's encoding (lists as '2,4,8') so that they are the
    # same categorical choices as the stored trials'; config_from_params decodes them.
    param_space = {p: tune.choice(list(d.choices)) for p, d in ctx.space.distributions().items()}
    worker_spec = _worker_spec(spec)
    progress, stop = _driver_hooks(tune, ctx, record)
    # Accuracy first, split across the cluster by width setting and data shard (ray_accuracy.py).
    tables = distribute_passes(ctx, worker_spec, shards=spec.search.workers)
    trainable = tune.with_parameters(_trial, spec_json=worker_spec, tables=tables)
    if target:  # timed trials only on the target nodes, each holding one whole unit (see the docstring)
        trainable = tune.with_resources(trainable, {"cpu": 1, target: 1})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=todo,
            max_concurrent_trials=spec.search.workers,
            time_budget_s=spec.search.timeout,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=f"{temp_dir}/tune", verbose=0, callbacks=[progress], stop=stop),
    )
    errors = tuner.fit().errors
    if errors:  # Tune logs a failed trial and goes on; surface it (finished trials stay in the storage)
        raise errors[0]


def _worker_spec(spec: RunSpec) -> str:
    """The spec as a worker loads it: JSON with absolute paths (a worker on another node of a cluster
    starts in another folder)."""
    return json.dumps(
        {**spec.model_dump(mode="json"), "base_dir": str(Path(spec.base_dir).resolve()),
         "output": str(spec.output_dir.resolve())},
        sort_keys=True,
    )  # fmt: skip


def _history(ctx: RunContext):
    """The stored trials, in memory for Tune's sampler: a resumed run continues where it stopped."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name=ctx.spec.run_name, directions=[o.direction for o in ctx.spec.objectives]
    )
    distributions = ctx.space.distributions()
    study.add_trials(
        [
            t
            for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.distributions == distributions
        ]
    )  # trials of an edited space would mislead it
    return storage


def _driver_hooks(tune, ctx: RunContext, record) -> tuple:
    """A Tune callback that records each reported result in the storage (in the driver, the only
    writer), and a stopper that starts no more trials once ctx.stop is set. Tune pickles its whole
    setup for Tuner.restore (which we never use: our storage is the resume point), so both pickle
    empty and hold the driver's objects on the instance, not in a closure."""

    class Record(tune.Callback):
        def __init__(self, record):
            self.record = record

        def on_trial_result(self, iteration, trials, trial, result, **info):
            done = json.loads(result[RESULT_KEY])
            measured = Measured(
                DeploymentConfig.from_dict(done["config"]),
                done["key"],
                done["metrics"],
                done["reused"],
                done["measured_on"],
            )
            self.record(measured, done["params"])

        def __getstate__(self):
            return {}

    class StopFlag(tune.Stopper):
        def __init__(self, flag: list):
            self.flag = flag

        def __call__(self, trial_id, result) -> bool:
            return False  # each trial reports once and ends by itself

        def stop_all(self) -> bool:
            return bool(self.flag)

        def __getstate__(self):
            return {}

    return Record(record), StopFlag(ctx.stop)


# ---------------------------------------------------------------- worker side

RESULT_KEY = "adasearch"  # the reported result's field that carries the measured trial to the driver


def _target_retimer(ctx: RunContext):
    """ctx.retimer for a cluster: each re-timing round is a task on a node holding hardware.ray_resource."""
    import ray

    resource = ctx.spec.hardware.ray_resource
    spec_json = _worker_spec(ctx.spec)
    task = ray.remote(num_cpus=1, resources={resource: 1})(_retime_task)

    _require_resource(ctx.spec, resource)  # a resumed run may meet a cluster that lost its target nodes

    def retime(configs: list, budget_s: float, seed: int = 0) -> dict:
        ref = task.remote(spec_json, [c.to_dict() for c in configs], budget_s, seed)
        # Generous: loading the model on the node, then every round's visits of every config; never forever.
        wait_s = 600 + 4 * budget_s * len(configs)
        try:
            figures, node = ray.get(ref, timeout=wait_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise UserError(
                f"{ctx.spec.spec_file or 'spec'}: hardware.ray_resource: the re-timing of {len(configs)} finalists "
                f"on a {resource} node did not finish in {wait_s:.0f} s; the trials are kept: run again to resume"
            )
        note = f"finalists re-timed on Ray node {node} (it holds {resource}, the target)"
        if note not in ctx.notes:
            ctx.notes.append(note)
        return {DeploymentConfig.from_dict(c): f for c, f in figures}

    return retime


def _retime_task(spec_json: str, configs: list, budget_s: float, seed: int) -> tuple:
    """On a target node: the configs timed interleaved (Evaluator.time_interleaved), and this node's id."""
    import ray

    evaluator = worker_context(spec_json).measurer.evaluator
    timed = evaluator.time_interleaved([DeploymentConfig.from_dict(c) for c in configs], budget_s, seed=seed)
    return [(c.to_dict(), figures) for c, figures in timed.items()], ray.get_runtime_context().get_node_id()


def _trial(params: dict, spec_json: str, tables: dict) -> None:
    """One Tune trial: measure the sampled config and report it (objectives for Tune's searcher, and
    the whole measurement for the driver, which records it)."""
    import ray
    from ray import tune

    ctx = worker_context(spec_json)  # loaded once per worker process: Tune reuses its actors
    config = ctx.space.config_from_params(params)
    install_needed(ctx, config, tables)  # the driver's merged accuracy table, not a pass of this node's own
    measured = ctx.measurer.measure(config)
    node = ray.get_runtime_context().get_node_id()  # which node measured it: latency differs between nodes
    done = {
        "config": measured.config.to_dict(),
        "key": measured.key,
        "metrics": measured.metrics,
        "reused": measured.reused,
        "measured_on": node,
        "params": params,
    }
    tune.report({**measured.metrics, RESULT_KEY: json.dumps(done)})
