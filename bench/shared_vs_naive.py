"""Accuracy of every config of the demo space: shared anytime passes vs a loop of direct forwards.

python bench/shared_vs_naive.py
"""

import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import DeploymentConfig, load_model  # noqa: E402
from adasearch.data.datasets import load_data  # noqa: E402
from adasearch.measure.accuracy import AccuracyEngine  # noqa: E402

# The demo space: tokens x depth x width x global exit threshold (search_spaces/demo.yaml).
TOKENS, DEPTHS, WIDTHS = [1, 2, 4, 8, 16, 32], range(1, 7), [8, 16, 32]
THRESHOLDS = [None, 0.8, 0.9, 0.95, 0.99]


def main():
    model, data = load_model("demo"), load_data("digits")
    configs = [
        DeploymentConfig(num_tokens=n, depth=d, mat_dim=w, depth_tau=t)
        for n, d, w, t in itertools.product(TOKENS, DEPTHS, WIDTHS, THRESHOLDS)
    ]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # cold cache: the passes really run
        shared = AccuracyEngine(model, data, cache_dir=cache).measure(configs)
    t_shared = time.perf_counter() - start

    start = time.perf_counter()
    y = torch.cat([y for _, y in data.batches(256)])
    naive = {}
    with torch.inference_mode():
        for c in configs:
            pred = torch.cat([model.run(x, c).logits.argmax(-1) for x, _ in data.batches(256)])
            naive[c] = (pred == y).sum().item() / len(y)  # exact fraction, as the engine reports it
    t_naive = time.perf_counter() - start

    mismatches = sum(shared[c].top1 != naive[c] for c in configs)
    save_table(
        "shared_vs_naive",
        "Accuracy of the whole demo space: shared passes vs direct forwards",
        ["method", "configs", "samples", "wall s", "speed-up", "accuracy mismatches"],
        [
            ["direct forward per config", len(configs), len(y), f"{t_naive:.2f}", "1.0x", "-"],
            [
                "shared anytime passes (cold cache)",
                len(configs),
                len(y),
                f"{t_shared:.2f}",
                f"{t_naive / t_shared:.1f}x",
                mismatches,
            ],
        ],
        [
            f"{len(set(map(lambda c: c.mat_dim, configs)))} anytime passes serve all {len(configs)} configs.",
            "A warm cache (second hardware target) skips the passes entirely.",
        ],
    )
    assert mismatches == 0


if __name__ == "__main__":
    main()
