"""Accuracy passes across a Ray cluster: one task per (width setting, data shard).

An anytime pass (measure/accuracy.py) is per width setting and per sample, so it splits both ways:
the driver starts one Ray task for each setting the space needs and each contiguous shard of the
search data, joins each setting's shards in data order (accuracy.merge_tables) and keeps the table in
its own cache, exactly where a single process would have written it. The integer tables (top-1
class, top-5 hit) are then equal to a single-process pass byte for byte. The tables travel to the
trial workers through Ray's object store, each fetched only by a worker that needs it, so no node runs
a pass that another already ran. These tasks time nothing, so they run on any node.

A worker process loads the run (model, data, space) once and keeps it (worker_context), for these
tasks and for the ray engine's trials alike.
"""

from __future__ import annotations

import json

from adasearch.config import DeploymentConfig
from adasearch.search.context import RunContext, prepare
from adasearch.spec import RunSpec

_CONTEXTS: dict = {}  # spec JSON -> RunContext: Ray reuses worker processes, so a run loads once per process


def worker_context(spec_json: str) -> RunContext:
    """The run's context in a worker process, without storage (only the driver writes)."""
    if spec_json not in _CONTEXTS:
        _CONTEXTS[spec_json] = prepare(RunSpec(**json.loads(spec_json)), storage=False)
    return _CONTEXTS[spec_json]


def table_name(key) -> str:
    """A structural key as a string that both sides compute alike (ints and tuples only)."""
    return repr(key)


def _shard_pass(spec_json: str, representative: dict, shard: int, shards: int) -> dict:
    """In a worker: the anytime table of one width setting over one shard of the search data."""
    from adasearch.data.split import shards as split

    engine = worker_context(spec_json).measurer.evaluator.accuracy
    return engine.anytime_table(DeploymentConfig.from_dict(representative), split(engine.data, shards)[shard])


def distribute_passes(ctx: RunContext, spec_json: str, shards: int) -> dict:
    """Run the passes the space needs and the driver's cache lacks as Ray tasks (settings x shards),
    keep the merged tables in the driver's cache, and return {table_name: ObjectRef} for every width
    setting of the space, for the trial workers. Ray must be initialised."""
    import ray

    from adasearch.measure.accuracy import merge_tables, structural_key

    engine = ctx.measurer.evaluator.accuracy
    # Token counts vary too, so that a width setting whose first count is off the block boundaries still
    # finds a config that can share its pass; too many combinations: widths and granularities alone.
    settings = ctx.space.pass_settings() or ctx.space.width_settings()
    todo = engine.missing_tables(settings)
    shards = max(1, min(shards, len(engine.data)))
    task = ray.remote(num_cpus=1)(_shard_pass)
    # Every task starts before any is awaited, so they run side by side on the cluster's CPUs.
    started = {
        key: [task.remote(spec_json, rep.to_dict(), i, shards) for i in range(shards)] for key, rep in todo.items()
    }
    for key, parts in started.items():
        engine.install_table(todo[key], merge_tables(ray.get(parts)))
    if todo:
        ctx.notes.append(
            f"accuracy: {len(todo)} anytime passes ran as {len(todo) * shards} Ray tasks "
            f"({len(todo)} width settings x {shards} data shards), merged into the driver's cache"
        )
    refs = {}
    for rep in settings:
        if engine.shareable(rep):
            key = structural_key(engine.model, rep)
            refs.setdefault(table_name(key), None)
            if refs[table_name(key)] is None:
                refs[table_name(key)] = ray.put(engine.table(rep))
    return refs


def install_needed(ctx: RunContext, config: DeploymentConfig, tables: dict) -> None:
    """In a trial worker: fetch the table `config` needs from the object store, if this process lacks it."""
    import ray

    from adasearch.measure.accuracy import structural_key

    engine = ctx.measurer.evaluator.accuracy
    canon = ctx.space.canonical(config)
    if not engine.shareable(canon):
        return
    ref = tables.get(table_name(structural_key(engine.model, canon)))
    if ref is not None and engine.missing_tables([canon]):
        engine.install_table(canon, ray.get(ref))
