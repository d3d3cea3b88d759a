"""Latency of one config measured 5 times: how much does p50 move between repeats?

python bench/latency_repeatability.py
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import DeploymentConfig, load_model  # noqa: E402
from adasearch.data.datasets import load_data  # noqa: E402
from adasearch.measure.evaluator import Evaluator, Hardware  # noqa: E402


def main(repeats: int = 5, budget_s: float = 1.0):
    ev = Evaluator(load_model("demo"), load_data("digits"), Hardware(batch_size=1))
    rows, _p50s = [], []
    for config in [
        DeploymentConfig(),
        DeploymentConfig(num_tokens=8, mat_dim=16, depth=3),
        DeploymentConfig(depth_tau=0.95),
    ]:
        m = ev.measure_accuracy_and_cost([config])[config]
        runs = [ev.time(m, config, budget_s=budget_s).latency_p50_ms for _ in range(repeats)]
        spread = (max(runs) - min(runs)) / statistics.median(runs)
        rows.append(
            [
                config.label(),
                ", ".join(f"{r:.3f}" for r in runs),
                f"{statistics.median(runs):.3f}",
                f"{100 * statistics.pstdev(runs) / statistics.mean(runs):.1f}%",
                f"{100 * spread:.1f}%",
            ]
        )
    save_table(
        "latency_repeatability",
        f"p50 latency of the demo, {repeats} repeats of {budget_s:g} s each (CPU, batch 1)",
        ["config", "p50 ms per repeat", "median", "CV", "(max-min)/median"],
        rows,
        [
            "Each repeat warms up, then times one real batch per rep for the time budget.",
            "Early-exit configs are timed on real data, so their latency spread includes the exit mix.",
        ],
    )


if __name__ == "__main__":
    main()
