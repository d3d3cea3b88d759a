"""The results folder: the contract between run, report, export and serve.

    run.yaml        resolved spec + environment
    study.db        Optuna storage (resumable; optuna-dashboard opens it)
    trials.csv      every completed trial: knobs, metrics, feasibility
    pareto.csv, pareto.json
    deployments/    one YAML per Pareto config, named by its figures
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import yaml

from adasearch import __version__
from adasearch.measure.flops import MACS_CONVENTION
from adasearch.search import trials as T
from adasearch.search.pareto import pareto_front


def front_of(recs: list, spec) -> list:
    """Feasible, non-dominated records, best first objective first."""
    directions = [o.direction for o in spec.objectives]
    feasible = [r for r in recs if r.feasible]
    front = [feasible[i] for i in pareto_front([T.objective_values(spec, r.metrics) for r in feasible], directions)]
    first = spec.objectives[0]
    return sorted(front, key=lambda r: r.metrics[first.metric], reverse=first.direction == "maximize")


def closest(recs: list, spec, n: int = 5) -> list:
    """Infeasible records nearest to the constraints: smallest summed relative violation."""
    return sorted(recs, key=lambda r: T.relative_violation(spec, r))[:n]


def _row(r) -> dict:
    row = {"trial": r.number, "config": r.config.label(), "feasible": r.feasible,
           "violations": "; ".join(f"{k} by {v:.4g}" for k, v in r.violations.items())}
    row.update({f"knob.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in r.config.to_dict().items()})
    row.update(r.metrics)
    return row


SHORT = {"accuracy": "acc{:.4f}", "top5": "top5_{:.4f}", "latency_p50_ms": "p50_{:.3g}ms",
         "latency_p90_ms": "p90_{:.3g}ms", "latency_p99_ms": "p99_{:.3g}ms", "gmacs": "{:.4g}GMACs",
         "macs": "{:.4g}MACs", "gflops": "{:.4g}GFLOPs", "flops": "{:.4g}FLOPs", "memory_mb": "{:.3g}MB",
         "throughput": "{:.4g}per_s", "mean_exit_depth": "exit{:.3g}"}


def deployment_name(r, spec) -> str:
    """e.g. acc0.9644-p50_0.678ms-N8-w16-d1.yaml: the figures first, so a listing sorts and reads well."""
    figures = [SHORT[o.metric].format(r.metrics[o.metric]) for o in spec.objectives]
    return "-".join(figures) + f"-{r.config.label()}.yaml"


def _model_ref(spec) -> str:
    """spec.model as an absolute path when it names a local folder or file, else as written (demo, a hub id)."""
    if spec.model == "demo":
        return spec.model
    local = Path(spec.resolve(spec.model)).expanduser()
    return str(local.resolve()) if local.exists() else spec.model


def write_results(ctx, recs: list, engine_name: str, interrupted: bool = False, new_trials: int = 0) -> dict:
    import pandas as pd

    spec = ctx.spec
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    env = ctx.measurer.evaluator.environment()
    front = front_of(recs, spec)
    # What serving code needs to reproduce the figures, written so that it holds from any directory:
    # the model as an absolute path (the spec's may be relative to the spec file), and the device the
    # run measured on (the spec's may say "auto").
    model_ref = _model_ref(spec)
    hardware = {**spec.hardware.model_dump(), "device": env["device"]}
    summary = {
        "adasearch": __version__, "engine": engine_name, "interrupted": interrupted,
        "space": {"name": ctx.space.name, "file": ctx.space.source, "size": ctx.space.size()},
        "trials": len(recs), "new_trials": new_trials, "feasible": sum(r.feasible for r in recs),
        "pareto": len(front), "macs_convention": MACS_CONVENTION, "environment": env,
        "model_config": {k: getattr(ctx.space.cfg, k) for k in ("embed_dim", "depth", "max_latent_tokens",
                                                                "mask_token_grans", "mat_dims", "num_classes")},
        "spec": {**spec.to_yaml_dict(), "model": model_ref},
    }
    (out / "run.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    pd.DataFrame([_row(r) for r in recs]).to_csv(out / "trials.csv", index=False)
    pd.DataFrame([_row(r) for r in front]).to_csv(out / "pareto.csv", index=False)
    pareto = [{"trial": r.number, "name": deployment_name(r, spec), "config": r.config.to_dict(),
               "metrics": r.metrics} for r in front]
    (out / "pareto.json").write_text(json.dumps({"objectives": [o.model_dump() for o in spec.objectives],
                                                 "constraints": {k: b.model_dump() for k, b in spec.constraints.items()},
                                                 "environment": env, "macs_convention": MACS_CONVENTION,
                                                 "pareto": pareto}, indent=2))
    deployments = out / "deployments"
    if deployments.exists():
        shutil.rmtree(deployments)  # the front may have changed since the last write
    deployments.mkdir()
    for r, p in zip(front, pareto):
        doc = {"config": r.config.to_dict(), "metrics": r.metrics, "model": model_ref,
               "hardware": hardware, "data": spec.data.model_dump(),
               "macs_convention": MACS_CONVENTION, "trial": r.number}
        (deployments / p["name"]).write_text(yaml.safe_dump(doc, sort_keys=False))
    summary["front"] = front
    return summary


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


# Short column titles; a metric not listed keeps its own name.
HEADERS = {"accuracy": "top-1", "latency_p50_ms": "p50 ms", "latency_p90_ms": "p90 ms", "latency_p99_ms": "p99 ms",
           "mmacs": "MMACs", "mean_exit_depth": "exit depth", "throughput": "img/s", "memory_mb": "MB"}


def print_summary(summary: dict, recs: list, spec, console) -> None:
    from rich.table import Table

    front = summary["front"]
    console.print(f"{summary['trials']} trials ({summary['new_trials']} new, engine {summary['engine']}), "
                  f"{summary['feasible']} feasible, {len(front)} on the Pareto front -> {spec.output_dir}")
    always = ["accuracy", "latency_p50_ms", "latency_p90_ms", "mmacs", "mean_exit_depth"]
    shown_as_mmacs = {"macs", "gmacs", "flops", "gflops"}  # one compute column is enough
    cols = always + [o.metric for o in spec.objectives if o.metric not in {*always, *shown_as_mmacs}]
    if not front:
        console.print("[bold red]no config satisfies the constraints.[/bold red] Closest configs:")
        rows = closest(recs, spec)
    else:
        rows = front
    t = Table(title="Pareto front" if front else "closest configs")
    t.add_column("config", no_wrap=True)  # labels are what people copy; narrow the numbers instead
    for c in cols:
        t.add_column(HEADERS.get(c, c), justify="right")
    for r in rows:
        shown = {**r.metrics, "mmacs": r.metrics["macs"] / 1e6}  # millions read well at every model size
        t.add_row(r.config.label(), *[_fmt(shown.get(c)) for c in cols])
    console.print(t)
    if not front:
        for r in rows:
            console.print(f"  {r.config.label()} misses " + "; ".join(
                f"{k} by {v:.4g} (bound {spec.constraints[k].model_dump(exclude_none=True)})" for k, v in r.violations.items()))
    else:
        out = spec.output_dir
        console.print(f"next: adasearch report {out}   |   adasearch export {out} --pick \"max accuracy\"   |   "
                      f"adasearch serve {out}", highlight=False, soft_wrap=True)
