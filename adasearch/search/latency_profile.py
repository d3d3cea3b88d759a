"""The run's latency model: read from the results folder when it fits, else profiled and stored there.

A stored latency_model.json is used only when its fingerprint is this run's target (device and its
name, torch, threads, dtype, batch size, architecture) and it holds every part the configs need. One
of another target, a corrupt one, or one that lacks parts is never used silently: it is profiled
again and the summary says why in one line.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from adasearch.checks import ENUMERABLE_LIMIT
from adasearch.measure.latency_model import LatencyModel, part_keys
from adasearch.run_folder import LATENCY_MODEL, RunFolder
from adasearch.search.context import RunContext

PROFILING = "profiling latency parts"  # the progress line's description


def stored_model(folder: RunFolder, fingerprint: dict, needed: set) -> tuple:
    """(the stored model, None) when it can be used, else (None, why not; None when nothing is stored)."""
    doc, problem = folder.read_latency_model()
    if doc is None:
        return None, None if problem == "none stored yet" else problem
    try:
        model = LatencyModel.from_dict(doc)
    except ValueError as e:
        return None, f"{folder / LATENCY_MODEL}: {e}"
    why = model.why_unusable(fingerprint, needed)
    return (model, None) if why is None else (None, f"{folder / LATENCY_MODEL}: {why}")


def latency_model_for(ctx: RunContext, configs: list) -> tuple:
    """(LatencyModel for every part `configs` use, one line for the summary). Reused from the results
    folder when it fits this target, otherwise profiled now (progress on ctx.status) and stored."""
    evaluator = ctx.measurer.evaluator
    folder = RunFolder(ctx.spec.output_dir).create()
    fingerprint = evaluator.latency_fingerprint()
    batch = evaluator.hardware.batch_size
    needed = {k for c in configs for k in part_keys(evaluator.model.plan(**c.to_dict()), batch)}
    model, why = stored_model(folder, fingerprint, needed)
    if model is not None:
        return model, f"latency model: reused {folder / LATENCY_MODEL} ({len(model.parts)} parts, same target)"
    started = time.perf_counter()
    model = evaluator.profile_latency(
        configs, progress=lambda done, total: ctx.status(PROFILING, done, total), seed=ctx.spec.search.seed
    )
    folder.write_latency_model(model.to_dict())
    took = time.perf_counter() - started
    built = f"latency model: profiled {len(model.parts)} parts in {took:.1f} s"
    return model, built if why is None else f"{built}; not reused: {why}"


def describe(model: LatencyModel, limit: Optional[int] = None) -> list:
    """Rows (part, median ms) of the model, slowest first: what `adasearch profile` prints."""
    rows = sorted(model.parts.items(), key=lambda kv: -kv[1])
    return rows[:limit] if limit else rows


def profile_configs(ctx: RunContext) -> list:
    """The configs whose parts a profile covers: the whole space when it can be enumerated, else a
    seeded sample of it (a run with engine optuna predicts nothing, so it needs no more)."""
    import random

    space = ctx.space
    if space.size() <= ENUMERABLE_LIMIT:
        return list(space.unique())
    rng = random.Random(ctx.spec.search.seed)
    names = space.parameters()
    return list(
        dict.fromkeys(
            space.canonical(space.config_from_params({p: rng.choice(v) for p, v in names})) for _ in range(2000)
        )
    )


def profile_spec(spec, progress: bool = True, console=None) -> LatencyModel:
    """`adasearch profile`: the latency model of the spec's target, built or reused, stored in the
    results folder, and printed."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from adasearch.measure.contention import ContentionMonitor, summary_lines
    from adasearch.search.context import prepare

    console = console or Console()
    ctx = prepare(spec, storage=False)
    RunFolder(spec.output_dir).create().claim(spec.run_name)
    monitor = ContentionMonitor()
    monitor.watch(ctx.measurer.evaluator)
    configs = profile_configs(ctx)
    with Progress(disable=not progress, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(PROFILING, total=None)
        ctx.status = lambda description, done, total: bar.update(task, completed=done, total=total)
        model, note = latency_model_for(ctx, configs)
    table = Table(title=f"latency model of {spec.hardware.device}, batch {model.batch_size}: slowest parts")
    table.add_column("part")
    table.add_column("median ms", justify="right")
    for key, ms in describe(model, limit=12):
        table.add_row(key, f"{ms:.4g}")
    console.print(table)
    spread = float(np.percentile(model.noise, 90)) if model.noise else 1.0
    ratios = [r for _, r in model.exit_curve]
    exits = f", {min(ratios):.3g}-{max(ratios):.3g} x where it can exit ({len(ratios)} references)" if ratios else ""
    console.print(
        f"{len(model.parts)} parts for {len(configs)} configs; a whole forward is "
        f"{min(r for _, r in model.curve):.3g}-{max(r for _, r in model.curve):.3g} x its sum of parts "
        f"({len(model.curve)} references){exits}; "
        f"p90 of the noise x{spread:.3f} of the median"
    )
    console.print(f"target: {', '.join(f'{k} {v}' for k, v in model.fingerprint.items() if v is not None)}")
    console.print(f"{note}\nwritten: {RunFolder(spec.output_dir) / LATENCY_MODEL}")
    for line in summary_lines(monitor.summary(), [], []):
        console.print(line, highlight=False, soft_wrap=True)
    return model
