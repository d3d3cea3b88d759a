"""Does the guarantee hold? Certified vs naive choice of a cheap config, over random three-way splits.

    python bench/risk_control.py

On the demo's 450 held-out digits: every network of the demo space is evaluated once per image (shared
anytime passes); then, for each of SPLITS random splits into search / calibrate / test thirds:
- the search third picks the front (top-1 vs MACs);
- certified: the front is tested on the calibrate third from the most to the least MACs with
  Hoeffding-Bentkus p-values at epsilon = 1 - CONFIDENCE, stopping at the first failure (Pareto Testing,
  adasearch.search.heldout.certify); the cheapest certified config is chosen;
- naive: the cheapest front config whose empirical calibrate-third risk is <= delta;
- the chosen config's risk on the fresh test third decides a violation (> delta).
Risks: accuracy_drop (top-1 of the full config minus the config's) and disagreement (top-1 differs from
the full config's). Certified accuracy_drop tests the rate of images the full config gets right and the
config wrong, which bounds the drop from above.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table

from adasearch import load_model
from adasearch.config import DeploymentConfig
from adasearch.data.datasets import load_data
from adasearch.measure.accuracy import AccuracyEngine
from adasearch.measure.closed_form_macs import CostModel
from adasearch.search.front.heldout import certify
from adasearch.search.front.pareto import pareto_front
from adasearch.search.space import SearchSpace

SPLITS = 200
CONFIDENCE = 0.9
DELTAS = {"accuracy_drop": 0.05, "disagreement": 0.10}


def evaluate_space(tmp_cache: str):
    """Per network: correctness and predictions on every image, and MACs under its exit mix."""
    model = load_model("demo")
    data = load_data("digits")
    space = SearchSpace.load("demo", model.cfg)
    configs = list(space.unique())
    full = space.canonical(DeploymentConfig())
    configs = list(dict.fromkeys([full, *configs]))
    results = AccuracyEngine(model, data, cache_dir=tmp_cache).measure(configs, keep_predictions=True)
    cost, labels = CostModel(model), data.labels()
    pred = torch.stack([results[c].predictions for c in configs])  # (configs, images)
    macs = torch.tensor([cost.config_macs(c, results[c].exit_fractions) for c in configs])
    return configs, pred, pred == labels, macs


def choose(risk_calib: torch.Tensor, loss_calib: torch.Tensor, front: list, macs: torch.Tensor, delta: float,
           n: int) -> tuple:  # fmt: skip
    """(certified choice, naive choice) among `front` (config indices); None when nothing qualifies."""
    figures = {i: {"test_samples": n, "_loss": {"risk": float(loss_calib[i])}} for i in front}
    certified = certify([(i, float(macs[i])) for i in front], figures, "risk", delta, CONFIDENCE)
    cert = min(certified, key=lambda i: macs[i]) if certified else None
    naive_ok = [i for i in front if risk_calib[i] <= delta]
    naive = min(naive_ok, key=lambda i: macs[i]) if naive_ok else None
    return cert, naive


def main():
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        configs, pred, correct, macs = evaluate_space(cache)
    full = 0  # index of the full config
    n_images = pred.shape[1]
    gen = torch.Generator().manual_seed(0)
    third = n_images // 3
    stats = {(risk, who): {"violations": 0, "saved": [], "none": 0} for risk in DELTAS for who in ("cert", "naive")}
    for _ in range(SPLITS):
        perm = torch.randperm(n_images, generator=gen)
        search, calib, test = perm[:third], perm[third : 2 * third], perm[2 * third : 3 * third]
        acc_search = correct[:, search].float().mean(1)
        front = pareto_front([[float(a), float(m)] for a, m in zip(acc_search, macs)], ["maximize", "minimize"])
        for risk, delta in DELTAS.items():
            if risk == "accuracy_drop":
                risk_of = lambda part: correct[full, part].float().mean() - correct[:, part].float().mean(1)  # noqa: E731
                loss_calib = (correct[full, calib] & ~correct[:, calib]).float().mean(1)
            else:
                risk_of = lambda part: (pred[:, part] != pred[full, part]).float().mean(1)  # noqa: E731
                loss_calib = risk_of(calib)
            cert, naive = choose(risk_of(calib), loss_calib, front, macs, delta, len(calib))
            fresh = risk_of(test)
            for who, chosen in (("cert", cert), ("naive", naive)):
                s = stats[risk, who]
                if chosen is None:
                    s["none"] += 1
                    s["saved"].append(0.0)
                    continue
                s["violations"] += int(fresh[chosen] > delta)
                s["saved"].append(float(1 - macs[chosen] / macs[full]))
    rows = []
    for (risk, who), s in stats.items():
        rows.append([risk, DELTAS[risk], "certified (HB, fixed sequence)" if who == "cert" else "naive (empirical)",
                     f"{s['violations'] / SPLITS:.3f}", f"{100 * statistics.mean(s['saved']):.1f} %",
                     s["none"]])  # fmt: skip
    text = save_table(
        "risk_control",
        f"Risk control on the demo: {SPLITS} random search / calibrate / test splits of {n_images} digits, "
        f"confidence {CONFIDENCE}",
        ["risk", "delta", "choice", "violation rate (target <= 0.10)", "mean MACs saved vs full", "splits with none"],
        rows,
        [
            f"{len(configs)} networks of the demo space; thirds of {third} images; the full config is "
            f"{configs[full].label()} ({float(macs[full]) / 1e6:.3f} MMACs under its exit mix).",
            "Violation: the chosen config's risk on the fresh test third exceeds delta. 'none': nothing qualified "
            "(the full config is then used: no saving, no violation).",
            "delta: accuracy_drop 0.05 and disagreement 0.10, so that 150 calibration images leave room to certify "
            "configs cheaper than the full one: at delta 0.03 a config needs zero right-to-wrong images among 150 "
            "(the HB p-value of one such image is 0.13 > 0.1), at 0.05 up to two pass.",
            "MACs are the whole set's expected MACs under each config's exit mix; savings are 1 - MACs / full MACs.",
            f"Whole script: {time.perf_counter() - t0:.1f} s.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
