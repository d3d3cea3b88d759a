"""Search cost: engine: model against engine: optuna (100 trials) on the in1k space at the IN-1K size.

python bench/search_cost.py
python bench/search_cost.py --runtimes eager compile   # engine: model under each runtime (compile's cost)

The model has the released IN-1K shape with random weights (LayerScale randomised so that no block is
a no-op, biases zero), and 32 synthetic images (smooth random patterns) are labelled with the full
config's own predictions:
accuracy is agreement with the full model, so it really falls with tokens, depth and width. Both
searches run `adasearch run` in a fresh process with its own accuracy cache, on the in1k space
(2,646 configs), 2 threads, batch 1, objectives accuracy (max) and latency p50 (min), no held-out part
(32 images are too few to split). Figures: wall time, configs timed (per trial, and re-timed as
finalists), and the hypervolume of each final front on its re-timed figures, against one reference
point (accuracy 0, 1.1 x the slowest p50 of both fronts).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import AdaPerceiver, AdaPerceiverConfig  # noqa: E402
from adasearch.metrics import P50, QUALITY, interval_columns  # noqa: E402
from adasearch.model.loading import save_model  # noqa: E402
from adasearch.model.released import RELEASED_IN1K as IN1K  # noqa: E402
from adasearch.search.front.pareto import hypervolume  # noqa: E402

IMAGES = 32


def make_model_and_data(folder: Path) -> tuple:
    torch.manual_seed(0)
    model = AdaPerceiver(AdaPerceiverConfig(**IN1K)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.zero_()  # random biases make the logits the same for every image
        # Smooth random patterns (4x4 upsampled) with a little pixel noise: white noise alone averages out
        # in the read's attention, and every image would get the same class.
        coarse = torch.nn.functional.interpolate(torch.randn(IMAGES, 3, 4, 4) * 3, size=224, mode="bilinear")
        x = coarse + 0.3 * torch.randn(IMAGES, 3, 224, 224)
        y = model(x).logits.argmax(-1)
    model_dir = save_model(model, folder / "model")
    np.savez(folder / "images.npz", x=x.numpy(), y=y.numpy())
    return model_dir, folder / "images.npz", len(set(y.tolist()))


def search(folder: Path, model_dir: Path, data: Path, engine: str, runtime: str = "eager") -> dict:
    out = folder / f"out-{engine}-{runtime}"
    spec = {
        "name": f"cost-{engine}-{runtime}",
        "model": str(model_dir),
        "data": {"source": str(data), "holdout": 0},
        "hardware": {"device": "cpu", "threads": 2, "batch_size": 1, "runtime": runtime},
        "objectives": [{"metric": QUALITY, "direction": "maximize"}, {"metric": P50, "direction": "minimize"}],
        "search": {"space": "in1k", "engine": engine, "trials": 100, "seed": 0},
        "output": str(out),
    }
    path = folder / f"{engine}-{runtime}.yaml"
    path.write_text(yaml.safe_dump(spec))
    # A cache per run: a later run must not find the accuracy passes of an earlier one (its wall time would hide them).
    env = {**os.environ, "ADASEARCH_CACHE": str(folder / f"cache-{engine}-{runtime}")}
    started = time.perf_counter()
    subprocess.run(["adasearch", "run", str(path), "--no-progress"], check=True, env=env)
    wall = time.perf_counter() - started
    trials = pd.read_csv(out / "trials.csv")
    front = json.loads((out / "pareto.json").read_text())["pareto"]
    retimed = int(trials[interval_columns(P50)[0]].notna().sum())
    run_doc = yaml.safe_load((out / "run.yaml").read_text())
    profiled = re.search(r"profiled \d+ parts in ([\d.]+) s", " ".join(run_doc["notes"]))
    built = run_doc["runtime_build"]
    # engine: model times nothing per trial (it predicts); optuna times each distinct network once (not repeats)
    per_trial = 0 if engine == "model" else int(trials["config"].nunique())
    return {"engine": engine, "runtime": runtime, "wall": wall, "per_trial": per_trial, "retimed": retimed,
            "front": front, "profile": f"{float(profiled.group(1)):.0f}" if profiled else "-",
            "build": f"{built['build_s']:.0f}" if runtime != "eager" else "-",
            "whole": str(built.get("whole_compiles", "-"))}  # fmt: skip


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--runtimes", nargs="+", default=None, help="engine: model under each of these runtimes")
    parser.add_argument("--name", default=None, help="the table's name in bench/results (default: by mode)")
    args = parser.parse_args()
    runs = [("model", r) for r in args.runtimes] if args.runtimes else [("model", "eager"), ("optuna", "eager")]
    with tempfile.TemporaryDirectory(prefix="cost") as tmp:
        folder = Path(tmp)
        model_dir, data, classes = make_model_and_data(folder)
        results = [search(folder, model_dir, data, e, r) for e, r in runs]
    slowest = max(row["metrics"][P50] for r in results for row in r["front"])
    reference = [0.0, 1.1 * slowest]
    rows = []
    for r in results:
        points = [[row["metrics"][QUALITY], row["metrics"][P50]] for row in r["front"]]
        hv = hypervolume(points, ["maximize", "minimize"], reference)
        timed = r["per_trial"] + r["retimed"]
        rows.append([r["engine"], r["runtime"], f"{r['wall']:.0f}", r["profile"], r["build"], r["whole"],
                     r["per_trial"], r["retimed"], timed, len(r["front"]), f"{hv:.2f}"])  # fmt: skip
    save_table(
        args.name or ("search_cost" if not args.runtimes else "search_cost_runtimes"),
        f"Search cost on the in1k space (2,646 configs), IN-1K size with random weights, {IMAGES} images, CPU",
        [
            "engine",
            "runtime",
            "wall s",
            "of it profiling s",
            "building s",
            "whole-config compiles",
            "configs timed per trial",
            "finalists re-timed",
            "timings in all",
            "front",
            "hypervolume (accuracy x ms)",
        ],  # fmt: skip
        rows,
        [
            f"Labels: the full config's own predictions ({classes} distinct classes among {IMAGES} images).",
            "optuna: TPE, 100 trials (distinct networks), each timed briefly, then its finalists re-timed.",
            "model: exact accuracy of every config from 3 anytime passes, latency predicted, finalists re-timed.",
            "Target: model times <= 50 configs, finishes faster, hypervolume >= optuna's. Under runtime compile: "
            "at most 2x the eager search's wall time, at most 50 whole-config compiles.",
            "Hypervolume: accuracy from 0 up, p50 up to 1.1 x the slowest front p50 of both runs.",
        ],
    )


if __name__ == "__main__":
    main()
