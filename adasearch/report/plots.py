"""The report's pictures, as PNG bytes: the Pareto front, hypervolume over trials, knob effects.

Everything reads the results folder's tables (trials.csv, pareto.json), never the study, so a report
can be made on a machine without the model.
"""

from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from adasearch import metrics  # noqa: E402
from adasearch.search.front.pareto import hypervolume, pareto_front  # noqa: E402

KNOBS = [("knob.num_tokens", "latent tokens"), ("knob.depth", "depth (blocks)"), ("knob.mat_dim", "width (mat_dim)")]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _interval(df: pd.DataFrame, metric: str):
    """[below, above] error-bar lengths from a metric's interval columns, or None without them."""
    low, high = metrics.interval_columns(metric)
    if low not in df or df[low].isna().all():
        return None
    return [(df[metric] - df[low]).clip(lower=0).fillna(0), (df[high] - df[metric]).clip(lower=0).fillna(0)]


def front_plot(trials: pd.DataFrame, front: pd.DataFrame, objectives: list, constraints: dict) -> bytes:
    """Every trial faintly (infeasible as crosses), the front bold; constraint limits as dashed lines.
    With 3 objectives: one panel per pair."""
    pairs = list(itertools.combinations(objectives, 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        x, y = b["metric"], a["metric"]  # cost on x, quality (first objective) on y reads naturally
        feas = trials[trials["feasible"]]
        infeas = trials[~trials["feasible"]]
        ax.scatter(feas[x], feas[y], s=12, alpha=0.25, color="tab:gray", label="dominated")
        if len(infeas):
            ax.scatter(infeas[x], infeas[y], s=14, alpha=0.25, marker="x", color="tab:red", label="infeasible")
        f = front.sort_values(x)
        # A 3-objective front projected on a pair is not a curve: points only.
        ax.plot(f[x], f[y], "-o" if len(objectives) == 2 else "o", color="tab:blue", ms=5, lw=1.5, label="Pareto front")
        xerr, yerr = _interval(f, x), _interval(f, y)
        if xerr is not None or yerr is not None:  # re-timed figures: their 95 % intervals
            ax.errorbar(f[x], f[y], xerr=xerr, yerr=yerr, fmt="none", ecolor="tab:blue", alpha=0.6, capsize=2)
        for metric, axis in ((x, "x"), (y, "y")):
            bound = constraints.get(metric, {})
            for side in ("min", "max"):
                if bound.get(side) is not None:
                    line = ax.axvline if axis == "x" else ax.axhline
                    line(bound[side], ls="--", lw=1, color="tab:red")
        ax.set_xlabel(metrics.label(x))
        ax.set_ylabel(metrics.label(y))
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle("Pareto front (dashed: constraint limits)", fontsize=11)
    return _png(fig)


def hypervolume_curve(trials: pd.DataFrame, objectives: list) -> tuple:
    """Hypervolume of the feasible front after each trial, relative to the final one."""
    metrics = [o["metric"] for o in objectives]
    directions = [o["direction"] for o in objectives]
    ordered = trials.sort_values("trial")
    values = ordered[metrics].to_numpy()
    # reference: the worst value seen of each objective, so every trial counts
    ref = [values[:, i].min() if d == "maximize" else values[:, i].max() for i, d in enumerate(directions)]
    hv, front = [], []
    for row, feasible in zip(values.tolist(), ordered["feasible"]):
        if feasible:
            pts = front + [row]
            front = [pts[i] for i in pareto_front(pts, directions)]
        hv.append(hypervolume(front, directions, ref) if front else 0.0)
    final = hv[-1] if hv and hv[-1] > 0 else 1.0
    fractions = [h / final for h in hv]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(range(1, len(fractions) + 1), fractions, color="tab:blue")
    ax.set_xlabel("trials (in the order they finished)")
    ax.set_ylabel("hypervolume / final")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Hypervolume over trials", fontsize=11)
    return _png(fig), fractions


def _knob_numeric(series: pd.Series, default: float) -> pd.Series:
    """A knob column as numbers: None means the default; a per-layer list becomes its mean."""
    import json

    def conv(v):
        if isinstance(v, str) and v.startswith("["):
            vals = [default if x is None else x for x in json.loads(v)]
            return sum(vals) / len(vals)
        return default if v is None or pd.isna(v) else float(v)

    return series.map(conv)


def knob_effects(trials: pd.DataFrame, defaults: dict, cost_metric: str) -> bytes:
    """Accuracy and cost against tokens, depth and width (each point a trial; line: the mean)."""
    fig, axes = plt.subplots(2, len(KNOBS), figsize=(4.2 * len(KNOBS), 6.4), squeeze=False)
    for col, (knob, label) in enumerate(KNOBS):
        if knob not in trials:
            continue
        x = _knob_numeric(trials[knob], defaults[knob])
        for row, metric in enumerate([metrics.QUALITY, cost_metric]):
            ax = axes[row][col]
            ax.scatter(x, trials[metric], s=10, alpha=0.3, color="tab:gray")
            means = trials[metric].groupby(x).mean()
            ax.plot(means.index, means.values, "-o", color="tab:blue", ms=4)
            ax.set_xlabel(label)
            ax.set_ylabel(metrics.label(metric))
            ax.grid(alpha=0.3)
    fig.suptitle("Knob effects (grey: trials; blue: mean per value)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def heldout_plot(front: pd.DataFrame, certified: set, cost_metric: str) -> bytes:
    """The front's search accuracy (open) against its held-out accuracy with 95 % intervals (filled),
    over the cost: the gap is the search's optimism. Certified configs are starred."""
    low, high = metrics.interval_columns(metrics.TEST_ACCURACY)
    f = front.sort_values(cost_metric)
    x, test = f[cost_metric], f[metrics.TEST_ACCURACY]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x, f[metrics.QUALITY], "o", mfc="none", color="tab:gray", label="search part (chose the front)")
    ax.errorbar(x, test, yerr=[test - f[low], f[high] - test], fmt="o", color="tab:blue", capsize=3,
                label="held-out, 95 % interval")  # fmt: skip
    stars = f[f["trial"].isin(certified)]
    if len(stars):
        ax.plot(stars[cost_metric], stars[metrics.TEST_ACCURACY], "*", ms=14, color="tab:orange", label="certified")
    if len(x) and x.min() > 0 and x.max() / x.min() > 10:
        ax.set_xscale("log")  # cheap configs crowd the left otherwise
    ax.set_xlabel(metrics.label(cost_metric))
    ax.set_ylabel(metrics.label(metrics.QUALITY))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("How sure is this number? Search vs held-out accuracy", fontsize=11)
    return _png(fig)


def predicted_vs_measured(trials: pd.DataFrame) -> bytes:
    """The latency model's prediction against the re-timed figure, for every re-timed finalist that was
    predicted: p50 and p90, with the y = x line, a ±10 % band and the re-timing's 95 % intervals."""
    panels = [m for m in (metrics.P50, metrics.P90) if metrics.predicted_column(m) in trials]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, name in zip(axes[0], panels):
        rows = trials[
            trials[metrics.predicted_column(name)].notna() & trials[metrics.interval_columns(name)[0]].notna()
        ]
        x, y = rows[metrics.predicted_column(name)], rows[name]
        top = float(max(x.max(), y.max())) * 1.08
        ax.fill_between([0, top], [0, 0.9 * top], [0, 1.1 * top], color="tab:green", alpha=0.12, label="±10 %")
        ax.plot([0, top], [0, top], "--", color="tab:green", lw=1, label="y = x")
        ax.errorbar(x, y, yerr=_interval(rows, name), fmt="o", ms=4, color="tab:blue", ecolor="tab:blue",
                    alpha=0.8, capsize=2, label="finalist (95 % interval)")  # fmt: skip
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"predicted {metrics.label(name)}")
        ax.set_ylabel(f"measured {metrics.label(name)}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Latency model: predicted against re-timed, finalists", fontsize=11)
    return _png(fig)


def has_predictions(trials: pd.DataFrame) -> bool:
    """Whether any re-timed trial carries a predicted p50 (the run used a latency model)."""
    column, low = metrics.predicted_column(metrics.P50), metrics.interval_columns(metrics.P50)[0]
    return column in trials and low in trials and bool((trials[column].notna() & trials[low].notna()).any())
