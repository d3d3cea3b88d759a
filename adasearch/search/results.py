"""What a run produces from its trials: the front, the rows and documents of the results folder
(written through RunFolder), and the summary printed at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adasearch import __version__, metrics
from adasearch.measure.closed_form_macs import MACS_CONVENTION
from adasearch.run_folder import RunFolder, deployment_doc
from adasearch.search import trials
from adasearch.search.front.beyond_noise import SESSIONS, equivalents
from adasearch.search.storage import recorded_spec


@dataclass
class RunSummary:
    """What `run` did: the counts of run.yaml, the records and the front."""

    engine: str
    trials: int  # completed trials in the storage (repeats of a network included)
    networks: int  # distinct networks among them
    new_trials: int
    feasible: int
    interrupted: bool
    stopped_by: Optional[str] = None  # "SIGINT" or "SIGTERM" when interrupted
    records: list = field(repr=False, default_factory=list)
    front: list = field(repr=False, default_factory=list)
    notes: list = field(default_factory=list)
    guarantees: dict = field(default_factory=dict)  # config key -> certified guarantee
    heldout_samples: int = 0  # images in the held-out part (0: the figures are in-sample)
    contention: Optional[dict] = None  # how busy the machine was while timing (measure/contention.py)
    time_s: dict = field(default_factory=dict)  # wall seconds: "total", and each phase's (search/phases.py)

    @property
    def optimism(self) -> Optional[float]:
        """Mean over the front of search accuracy minus held-out accuracy: the winner's curse, measured."""
        pairs = [(r.metrics[metrics.QUALITY], r.metrics.get(metrics.TEST_ACCURACY)) for r in self.front]
        pairs = [(a, t) for a, t in pairs if t is not None]
        return sum(a - t for a, t in pairs) / len(pairs) if pairs else None


def closest(recs: list, spec, n: int = 5) -> list:
    """Infeasible records nearest to the constraints: smallest summed relative violation."""
    return sorted(recs, key=lambda r: trials.relative_violation(spec, r))[:n]


def _public(figures: dict) -> dict:
    """A record's metrics without its per-round timings: those stay in the study (front/finalists.py)."""
    return {k: v for k, v in figures.items() if k != SESSIONS}


def _row(r, runtime: str) -> dict:
    row = {
        "trial": r.number,
        "config": r.config.label(),
        "feasible": r.feasible,
        "violations": "; ".join(f"{k} by {v:.4g}" for k, v in r.violations.items()),
        "measured_on": r.measured_on,
        "timing": r.timing,  # timed per trial, predicted (engine: model), or re-timed as a finalist
        "runtime": runtime,  # what the timed figures were measured under (hardware.runtime)
    }
    row.update({f"knob.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in r.config.to_dict().items()})
    row.update(_public(r.metrics))
    return row


def deployment_name(r, spec) -> str:
    """e.g. acc0.9644-p50_0.678ms-N8-w16-d1.yaml: the figures first, so a listing sorts and reads well."""
    figures = [metrics.short(o.metric, r.metrics[o.metric]) for o in spec.objectives]
    return "-".join(figures) + f"-{r.config.label()}.yaml"


def _model_ref(spec) -> str:
    """spec.model as an absolute path when it names a local folder or file, else as written (demo, a hub id)."""
    if spec.model == "demo":
        return spec.model
    local = Path(spec.resolve(spec.model)).expanduser()
    return str(local.resolve()) if local.exists() else spec.model


def write_results(ctx, summary: RunSummary) -> None:
    """run.yaml, trials.csv, pareto.csv, pareto.json and deployments/, through RunFolder."""
    spec = ctx.spec
    folder = RunFolder(spec.output_dir).create()
    env = ctx.measurer.evaluator.environment()
    front = summary.front
    run_doc = {
        "adasearch": __version__,
        "engine": summary.engine,
        "interrupted": summary.interrupted,
        "space": {"name": ctx.space.name, "file": ctx.space.source, "size": ctx.space.size()},
        "trials": summary.trials,
        "networks": summary.networks,
        "new_trials": summary.new_trials,
        "feasible": summary.feasible,
        "pareto": len(front),
        "notes": summary.notes,
        "time_s": summary.time_s,
        "holdout": {
            "fraction": spec.data.holdout,
            "samples": summary.heldout_samples,
            "optimism": summary.optimism,
            "certified": len(summary.guarantees),
        },
        "macs_convention": MACS_CONVENTION,
        "runtime_build": ctx.measurer.evaluator.runtime.stats(),  # what compiling / capturing / exporting cost
        "environment": {**env, "contention": summary.contention} if summary.contention else env,
        "model_config": {
            k: getattr(ctx.space.cfg, k)
            for k in ("embed_dim", "depth", "max_latent_tokens", "mask_token_grans", "mat_dims", "num_classes")
        },
        # The model as an absolute path: the spec's may be relative to the spec file, and serving
        # code reads this from any directory.
        "spec": {**recorded_spec(spec.to_yaml_dict()), "model": _model_ref(spec)},  # storage password masked
    }
    folder.write_run(run_doc)
    runtime = spec.hardware.runtime
    folder.write_trials([_row(r, runtime) for r in summary.records])
    # Each front config's alternatives within timing noise (pareto.equivalents): a list in pareto.json,
    # "; "-separated labels in pareto.csv and the report.
    equivalent = equivalents(front, summary.records, spec)
    folder.write_front(
        [{**_row(r, runtime), "equivalent": "; ".join(equivalent[trials.config_key(r.config)])} for r in front]
    )
    pareto = [
        {"trial": r.number, "name": deployment_name(r, spec), "config": r.config.to_dict(),
         "metrics": _public(r.metrics), "equivalent": equivalent[trials.config_key(r.config)]}
        for r in front
    ]  # fmt: skip
    for r, row in zip(front, pareto):
        guarantee = summary.guarantees.get(trials.config_key(r.config))
        if guarantee:
            row["guarantee"] = guarantee
    folder.write_pareto(
        {
            "objectives": [o.model_dump() for o in spec.objectives],
            "constraints": {k: b.model_dump() for k, b in spec.constraints.items()},
            "environment": env,
            "macs_convention": MACS_CONVENTION,
            "pareto": pareto,
        }
    )
    folder.write_deployments({row["name"]: deployment_doc(row, run_doc) for row in pareto})


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def print_summary(summary: RunSummary, spec, console) -> None:
    from rich.table import Table

    front, recs = summary.front, summary.records
    repeats = f", {summary.trials - summary.networks} repeats" if summary.trials > summary.networks else ""
    console.print(
        f"{summary.networks} networks measured ({summary.new_trials} new trials{repeats}, engine "
        f"{summary.engine}), {summary.feasible} feasible trials, {len(front)} on the Pareto front "
        f"-> {spec.output_dir}"
    )
    for note in summary.notes:
        console.print(f"note: {note}")
    cols = list(metrics.SUMMARY_COLUMNS)
    cols += [o.metric for o in spec.objectives if o.metric not in {*cols, *metrics.COMPUTE_ALIASES}]
    if summary.heldout_samples:  # the held-out figure matters more than the exit depth (the label shows tau)
        cols.insert(1, metrics.TEST_ACCURACY)
        cols.remove(metrics.EXIT_DEPTH)
    if not front:
        console.print("[bold red]no config satisfies the constraints.[/bold red] Closest configs:")
        rows = closest(recs, spec)
    else:
        rows = front
    t = Table(title="Pareto front" if front else "closest configs")
    t.add_column("config", no_wrap=True)  # labels are what people copy; narrow the numbers instead
    for c in cols:
        t.add_column(metrics.header(c), justify="right")
    low, high = metrics.interval_columns(metrics.TEST_ACCURACY)
    for r in rows:
        shown = metrics.with_mmacs(r.metrics)
        cells = [_fmt(shown.get(c)) for c in cols]
        if metrics.TEST_ACCURACY in cols and shown.get(low) is not None:
            t_acc = shown[metrics.TEST_ACCURACY]
            half = max(t_acc - shown[low], shown[high] - t_acc)  # the interval is asymmetric: its wider side
            cells[cols.index(metrics.TEST_ACCURACY)] = f"{t_acc:.3f}±{half:.2f}"
        label = r.config.label() + (" *" if trials.config_key(r.config) in summary.guarantees else "")
        t.add_row(label, *cells)
    console.print(t)
    _print_heldout(summary, spec, console)
    if not front:
        for r in rows:
            console.print(
                f"  {r.config.label()} misses "
                + "; ".join(
                    f"{k} by {v:.4g} (bound {spec.constraints[k].model_dump(exclude_none=True)})"
                    for k, v in r.violations.items()
                )
            )
    else:
        out = spec.output_dir
        console.print(
            f'next: adasearch report {out}   |   adasearch export {out} --pick "max {metrics.QUALITY}"   |   '
            f"adasearch serve {out}",
            highlight=False,
            soft_wrap=True,
        )


def _print_heldout(summary: RunSummary, spec, console) -> None:
    """How sure the figures are: held-out or in-sample, the optimism of the front, what is certified."""
    if not summary.heldout_samples:
        console.print("note: data.holdout is 0, so every accuracy above is in-sample: measured on the images that "
                      "chose the front, and optimistic")  # fmt: skip
        return
    optimism = summary.optimism
    if optimism is not None:
        console.print(
            f"held-out: {summary.heldout_samples} images the search never saw (95 % Clopper-Pearson intervals); "
            f"the front's search top-1 is {optimism:+.4f} above its held-out top-1 on average (optimism)"
        )
    for metric, bound in spec.certified.items():
        console.print(
            f"certified: {metric} <= {bound.max:g} with confidence {bound.confidence:g} for "
            f"{len(summary.guarantees)} of {len(summary.front)} Pareto configs, marked * "
            f"(Learn-then-Test, Pareto Testing)"
        )
