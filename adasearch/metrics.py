"""The metric registry: every metric adasearch measures, named once.

Each metric has a name (what specs, trials.csv, pareto.json and --pick call it), a direction, a label
for plots, a unit, a short format for file names, a column title, and a kind:

- ``deterministic``: the same on every run of the same model, data and dtype (accuracy, MACs, exit depth);
- ``timed``: a noisy timing on the target, measured briefly per trial and re-measured for finalists;
- ``memory``: peak memory of one forward; repeatable, but only traced when a search uses it;
- ``held-out``: measured after the search, on images that did not choose the front (data.holdout),
  against the full config; never an objective. accuracy_drop and disagreement can be certified.

The spec, Measurement, the summary table, the report, the plots, serving and --pick all derive from
this table. Adding a metric is one line here plus its measurement in measure/evaluator.py.
This module imports nothing heavy: the CLI, serving code and the report read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

DETERMINISTIC, TIMED, MEMORY, HELDOUT = "deterministic", "timed", "memory", "held-out"


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "maximize" or "minimize": what is better
    label: str  # axis label in plots
    unit: str
    short: str  # format of the figure in a deployment file name
    header: str  # column title in the terminal summary
    kind: str = DETERMINISTIC

    @property
    def timed(self) -> bool:
        return self.kind == TIMED


_M = Metric
REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        _M("accuracy", "maximize", "top-1 accuracy", "", "acc{:.4f}", "top-1"),
        _M("top5", "maximize", "top-5 accuracy", "", "top5_{:.4f}", "top-5"),
        _M("latency_p50_ms", "minimize", "latency p50 (ms/batch)", "ms", "p50_{:.3g}ms", "p50 ms", TIMED),
        _M("latency_p90_ms", "minimize", "latency p90 (ms/batch)", "ms", "p90_{:.3g}ms", "p90 ms", TIMED),
        _M("latency_p99_ms", "minimize", "latency p99 (ms/batch)", "ms", "p99_{:.3g}ms", "p99 ms", TIMED),
        _M("throughput", "maximize", "throughput (samples/s)", "samples/s", "{:.4g}per_s", "img/s", TIMED),
        _M("macs", "minimize", "MACs per image", "MACs", "{:.4g}MACs", "MACs"),
        _M("gmacs", "minimize", "GMACs per image", "GMACs", "{:.4g}GMACs", "GMACs"),
        _M("flops", "minimize", "FLOPs per image", "FLOPs", "{:.4g}FLOPs", "FLOPs"),
        _M("gflops", "minimize", "GFLOPs per image", "GFLOPs", "{:.4g}GFLOPs", "GFLOPs"),
        _M("memory_mb", "minimize", "peak memory (MB)", "MB", "{:.3g}MB", "MB", MEMORY),
        _M("mean_exit_depth", "minimize", "mean exit depth", "blocks", "exit{:.3g}", "exit depth"),
        _M("test_accuracy", "maximize", "held-out top-1 accuracy", "", "test{:.4f}", "held-out 95%", HELDOUT),
        _M("accuracy_drop", "minimize", "top-1 drop vs the full config", "", "drop{:.4f}", "drop", HELDOUT),
        _M(
            "disagreement", "minimize", "top-1 disagreement with the full config", "", "dis{:.4f}", "disagree", HELDOUT
        ),  # fmt: skip
    )
}
NAMES = tuple(REGISTRY)
SEARCH_NAMES = tuple(n for n, m in REGISTRY.items() if m.kind != HELDOUT)  # measured on every trial
HELDOUT_NAMES = tuple(n for n, m in REGISTRY.items() if m.kind == HELDOUT)
TEST_ACCURACY, DROP, DISAGREEMENT = HELDOUT_NAMES
CERTIFIABLE = (DROP, DISAGREEMENT)
TEST_SAMPLES = "test_samples"  # a count beside the held-out figures, not a metric
SIGNIFICANT = "drop_significant"  # a flag beside them: the drop is significant (exact McNemar, 5 %)
# Beside them under a runtime other than eager: the largest logit difference from eager on the held-out images
# checked, and whether it is beyond RUNTIME_ATOL for the dtype (fp32: reordered sums give ~1e-5 on the demo;
# half precision rounds each op, so runtimes that fuse differently move logits by far more).
RUNTIME_DIFF, RUNTIME_FLAG = "runtime_logit_diff", "runtime_numerics_flag"
RUNTIME_ATOL = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.05}
MAXIMIZE = frozenset(n for n, m in REGISTRY.items() if m.direction == "maximize")
TIMED_METRICS = frozenset(n for n, m in REGISTRY.items() if m.kind == TIMED)
MEMORY_METRICS = frozenset(n for n, m in REGISTRY.items() if m.kind == MEMORY)
# Measured on the target, so a trial that uses any of them times (and maybe traces) each config.
HARDWARE_METRICS = TIMED_METRICS | MEMORY_METRICS

# Roles: the policies below name metrics through these, never by a literal elsewhere.
QUALITY = "accuracy"  # what "the most accurate" means
P50, P90 = "latency_p50_ms", "latency_p90_ms"  # the latencies serving reports with each prediction
P99, THROUGHPUT = "latency_p99_ms", "throughput"
COMPUTE = "macs"  # the one compute figure the summary and the report show (as millions)
BUDGET = (P90, P50)  # what a latency budget is compared with, first present wins
DEFAULT_OBJECTIVES = (QUALITY, P50)
DEFAULT_COST = "gmacs"  # the cost axis of knob plots when the objectives name no cost
MEMORY_METRIC = next(iter(MEMORY_METRICS))
MMACS = "mmacs"  # a derived column: COMPUTE in millions
EXIT_DEPTH = "mean_exit_depth"
SUMMARY_COLUMNS = (QUALITY, P50, P90, MMACS, EXIT_DEPTH)
REPORT_COLUMNS = (
    QUALITY,
    "test_accuracy",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "accuracy_drop",
    SIGNIFICANT,
    "top5",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "throughput",
    MMACS,
    "memory_mb",
    EXIT_DEPTH,
)
COMPUTE_ALIASES = frozenset({"macs", "gmacs", "flops", "gflops"})  # shown as one MMACs column


def label(name: str) -> str:
    return REGISTRY[name].label if name in REGISTRY else name


def header(name: str) -> str:
    if name == MMACS:
        return "MMACs"
    return REGISTRY[name].header if name in REGISTRY else name


def short(name: str, value: float) -> str:
    return REGISTRY[name].short.format(value)


def direction(name: str) -> str:
    return REGISTRY[name].direction


def with_mmacs(metrics: dict) -> dict:
    """The metrics plus `mmacs` (millions of MACs), which read well at every model size."""
    macs = metrics.get(COMPUTE)
    return {**metrics, MMACS: None if macs is None else macs / 1e6}


def budget_latency(metrics: dict) -> Optional[float]:
    """The figure a latency budget is compared with: p90 (a config chosen for a budget then meets it on
    9 requests in 10), else p50 where a run did not record p90."""
    for name in BUDGET:
        if metrics.get(name) is not None:
            return metrics[name]
    return None


def tie_break(metrics: dict) -> tuple:
    """The one tie-break of adasearch, used by --pick and by Deployment: the more accurate config,
    then the faster by the budget latency. Larger tuples are better."""
    latency = budget_latency(metrics)
    return metrics.get(QUALITY, 0.0), -(latency if latency is not None else math.inf)


def relative_miss(amount: float, bound: float) -> float:
    """How far a value misses a bound, relative to the bound: how constraint violations (trials) and
    unmet --pick conditions are weighed against each other, so a miss of 1 ms on a 2 ms bound counts
    more than a miss of 0.001 on an accuracy floor of 0.9 only when it is relatively larger."""
    return abs(amount) / max(abs(bound), 1e-12)


def interval_columns(name: str) -> tuple[str, str]:
    """The columns of a figure's 95 % interval: NAME_ci_low, NAME_ci_high."""
    return f"{name}_ci_low", f"{name}_ci_high"


def predicted_column(name: str) -> str:
    """The column of a timed figure as the latency model predicted it: NAME_predicted."""
    return f"{name}_predicted"
