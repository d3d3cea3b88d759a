"""The same timing time per config, split into few long visits or many short ones: which gives the
narrower paired comparisons? (Why measure/interleaved.rounds_for takes as many rounds as it can.)

    python bench/visit_length.py [--budget-s 1.0] [--repeats 3] [--name visit_length]

Ten of the demo's fast configs (the tail where the front moves) are timed interleaved, budget_s each,
split into 8, 32 and 128 rounds; the three splits take turns, `repeats` times. For every pair of
configs and every split: the sd over rounds of the per-round log-ratio (the paired test's
observations, measure/paired.py), the 95 % bootstrap half-width of their median (in log units: 0.03 is
about 3 %), the sd of that median between the repeats, and the share of pairs the test separates. The
table gives each column's median over the 45 pairs.
"""

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import DeploymentConfig, load_model  # noqa: E402
from adasearch.data.datasets import load_data  # noqa: E402
from adasearch.measure import paired  # noqa: E402
from adasearch.measure.evaluator import Evaluator, Hardware  # noqa: E402
from adasearch.measure.interleaved import ROUND_FIGURES, time_interleaved  # noqa: E402
from adasearch.metrics import P50  # noqa: E402

SPLITS = (8, 32, 128)
CONFIGS = [(16, 1), (4, 1), (1, 2), (8, 2), (2, 1), (16, 2), (4, 2), (32, 1), (8, 1), (1, 1)]  # (tokens, depth)


def main(budget_s: float, repeats: int, name: str) -> None:
    torch.set_num_threads(2)
    ev = Evaluator(load_model("demo"), load_data("digits"), Hardware(batch_size=1, threads=2))
    configs = [DeploymentConfig(num_tokens=n, depth=d) for n, d in CONFIGS]
    fns = [ev.runner(c) for c in configs]
    timed = {split: [] for split in SPLITS}  # split -> per repeat, [per config: its p50 per round]
    reps = {split: [] for split in SPLITS}
    for repeat in range(repeats):
        for split in SPLITS:
            out = time_interleaved(fns, ev.latency_batches(), sync=lambda: None, budget_s=budget_s, rounds=split,
                                   seed=repeat)  # fmt: skip
            timed[split].append([o[ROUND_FIGURES][P50] for o in out])
            reps[split] += [o["latency_reps"] / split for o in out]
    rows = []
    for split in SPLITS:
        sds, halves, separated, between = [], [], [], []
        for a, b in itertools.combinations(range(len(configs)), 2):
            medians = []
            for per_config in timed[split]:
                logs = np.log(per_config[a]) - np.log(per_config[b])
                sds.append(float(np.std(logs, ddof=1)))
                found = paired.compare(per_config[a], per_config[b])
                halves.append((math.log(found.high) - math.log(found.low)) / 2)
                separated.append(found.separated)
                medians.append(float(np.median(logs)))
            between.append(statistics.stdev(medians))
        rows.append([split, f"{1e3 * budget_s / split:.0f}", f"{statistics.median(reps[split]):.0f}",
                     f"{statistics.median(sds):.3f}", f"{statistics.median(halves):.3f}",
                     f"{statistics.median(between):.3f}", f"{statistics.mean(separated):.0%}"])  # fmt: skip
    save_table(
        name,
        f"Paired comparisons of {len(configs)} demo configs timed {budget_s:g} s each, split into more or fewer "
        f"visits ({repeats} repeats)",
        [
            "rounds",
            "ms per visit",
            "calls per visit (median)",
            "per-round sd of log-ratio (median)",
            "95 % half-width of the median (log units, median)",
            "sd of the median between repeats (median)",
            "pairs separated",
        ],  # fmt: skip
        rows,
        [
            "Same time per config in every row. A per-round sd that stays level as visits shorten says the noise "
            "comes per visit, whatever its length: then more rounds narrow the paired interval as 1/sqrt(rounds).",
            "Separated: the 95 % interval of the median per-round ratio clears the 3 % practical threshold "
            "(measure/paired.py).",
            f"Command: python bench/visit_length.py --budget-s {budget_s:g} --repeats {repeats} --name {name}",
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="visit_length")
    args = parser.parse_args()
    main(args.budget_s, args.repeats, args.name)
