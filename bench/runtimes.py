"""Runtimes against eager, and this round's eager against the landed one: p50, speed-ups, rankings and fronts.

python bench/runtimes.py                      # CPU: demo (batch 1, 8) and IN-1K size (batch 1)
python bench/runtimes.py --quick              # the demo only
python bench/runtimes.py --dtype bfloat16 --landed-dtype float32 --runtimes eager compile --name runtimes_bf16
python bench/runtimes.py --device cuda --dtype bfloat16 --batch-sizes 1 32 --runtimes eager cudagraph compile \
    --name runtimes_cuda

Cases: random static configs of the demo model (its trained weights) and of the released IN-1K shape
(random weights). In one case every (config, runtime) pair is built first (compiled, captured, exported),
then all are timed in the same interleaved rounds (measure/interleaved.py), so drift lands on all alike.
`landed` is the forward of commit eb3e5ac (before this round: tables built in every block, complex RoPE),
loaded from git with the same weights: the eager speed-up is measured against it in the same rounds.
--landed-dtype runs it in another dtype (float32: what a CPU user ran before this round) while the runtimes
run in --dtype; it is then fed its input cast to that dtype inside the timed call.

Figures per runtime: median p50 over the configs, the median over configs of landed p50 / its p50 and of
eager p50 / its p50, Kendall's tau of its p50 ranking against eager's, and the Jaccard of the
(accuracy, p50) front over the configs against eager's front (demo only: random weights have no accuracy).
"""

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import AdaPerceiver, AdaPerceiverConfig, DeploymentConfig, load_model  # noqa: E402
from adasearch.measure.interleaved import time_interleaved  # noqa: E402
from adasearch.measure.latency import _synchronizer  # noqa: E402
from adasearch.model.released import RELEASED_IN1K as IN1K  # noqa: E402
from adasearch.runtimes import make_runtime  # noqa: E402

LANDED = "eb3e5ac"
ROOT = Path(__file__).resolve().parents[1]


def landed_model(model, dtype: torch.dtype):
    """The landed commit's model class with `model`'s weights, in dtype (None when git cannot show that commit)."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{LANDED}:adasearch/model/adaperceiver.py"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "landed_adaperceiver.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("landed_adaperceiver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["landed_adaperceiver"] = module
    spec.loader.exec_module(module)
    old = module.AdaPerceiver(module.AdaPerceiverConfig(**model.cfg.to_dict()))
    old.load_state_dict(model.state_dict())
    return old.to(next(model.parameters()).device, dtype).eval()


def random_static(cfg, count: int, seed: int) -> list:
    rng = random.Random(seed)
    grans = cfg.mask_token_grans or [cfg.max_latent_tokens]
    widths = cfg.mat_dims or [cfg.embed_dim]
    configs = {
        DeploymentConfig(num_tokens=rng.choice(grans), mat_dim=rng.choice(widths), depth=rng.randint(1, cfg.depth))
        for _ in range(count * 3)
    }
    return sorted(configs, key=lambda c: c.label())[:count]


def front(points: dict) -> set:
    """Configs not dominated in (accuracy max, p50 min)."""
    items = list(points.items())
    return {
        c
        for c, (a, t) in items
        if not any(a2 >= a and t2 <= t and (a2 > a or t2 < t) for c2, (a2, t2) in items if c2 != c)
    }


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def case(name, model, configs, batch, runtimes, device, budget_s, rounds, accuracy=None, landed_dtype=None) -> list:
    """Rows of one case: every runtime (and the landed forward) over `configs`, timed in the same rounds."""
    model = model.eval()
    plans = [model.plan(**c.to_dict()) for c in configs]
    fns, keys = [], []
    built = {}
    landed_dtype = landed_dtype or batch.dtype
    old = landed_model(model, landed_dtype)
    if old is not None:
        for c in configs:
            fns.append(lambda x, c=c: old.run(x.to(landed_dtype), c))
            keys.append(("landed", c))
    for rt_name in runtimes:
        runtime = make_runtime(rt_name, model, device, threads=None)
        for c, plan in zip(configs, plans):
            print(f"  {name}: building {rt_name} {c.label()}", flush=True)
            fns.append(runtime.forward(plan, batch))
            keys.append((rt_name, c))
        built[rt_name] = runtime.stats()
    timed = time_interleaved(fns, [batch], sync=_synchronizer(device), budget_s=budget_s, rounds=rounds)
    p50 = {k: t["latency_p50_ms"] for k, t in zip(keys, timed)}
    eager = np.array([p50[("eager", c)] for c in configs])
    rows = []
    for rt_name in (["landed"] if old is not None else []) + list(runtimes):
        ours = np.array([p50[(rt_name, c)] for c in configs])
        tau = kendalltau(eager, ours).statistic
        vs_landed = np.median([p50[("landed", c)] / p50[(rt_name, c)] for c in configs]) if old is not None else None
        fronts = "-"
        if accuracy is not None:
            mine = front({c: (accuracy[c], p50[(rt_name, c)]) for c in configs})
            theirs = front({c: (accuracy[c], p50[("eager", c)]) for c in configs})
            fronts = f"{jaccard(mine, theirs):.2f} ({len(mine)} vs {len(theirs)})"
        stats = built.get(rt_name, {})
        rows.append([
            name, rt_name, len(configs), f"{np.median(ours):.3f}",
            "-" if vs_landed is None else f"{vs_landed:.2f}x", f"{np.median(eager / ours):.2f}x", f"{tau:.2f}", fronts,
            f"{stats.get('build_s', 0):.0f} s" if stats else "-",
        ])  # fmt: skip
    return rows


def demo_accuracy(configs) -> dict:
    from adasearch.data.datasets import load_data
    from adasearch.measure.accuracy import AccuracyEngine

    model = load_model("demo").eval()
    engine = AccuracyEngine(model, load_data("digits"), batch_size=256)
    return {c: m.top1 for c, m in engine.measure(configs).items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the demo only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--landed-dtype", default=None, help="the landed forward's dtype (default: --dtype)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compile", "onnxruntime"])
    parser.add_argument("--configs", type=int, default=30)
    parser.add_argument("--in1k-configs", type=int, default=30)
    parser.add_argument("--name", default="runtimes")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    landed_dtype = getattr(torch, args.landed_dtype or args.dtype)
    rows = []
    demo = load_model("demo").to(device, dtype)
    configs = random_static(demo.cfg, args.configs, seed=0)
    accuracy = demo_accuracy(configs)
    for b in args.batch_sizes:
        x = torch.rand(b, demo.cfg.in_channels, demo.cfg.img_size, demo.cfg.img_size, device=device, dtype=dtype)
        rows += case(f"demo, batch {b}", demo, configs, x, args.runtimes, device, 0.4, 8, accuracy, landed_dtype)
    if not args.quick:
        torch.manual_seed(0)
        big = AdaPerceiver(AdaPerceiverConfig(**IN1K)).to(device, dtype)
        big_configs = random_static(big.cfg, args.in1k_configs, seed=1)
        b = args.batch_sizes[0]
        x = torch.randn(b, 3, 224, 224, device=device, dtype=dtype)
        rows += case(
            f"IN-1K size, batch {b}", big, big_configs, x, args.runtimes, device, 0.6, 4, landed_dtype=landed_dtype
        )
    save_table(
        args.name,
        f"Runtimes against eager and against the landed eager forward ({args.device}, {args.dtype}"
        + (f"; landed in {args.landed_dtype}" if args.landed_dtype not in (None, args.dtype) else "")
        + ")",
        [
            "case",
            "runtime",
            "configs",
            "median p50 ms",
            "landed / it (median)",
            "eager / it (median)",
            "Kendall tau vs eager",
            "front Jaccard vs eager (sizes)",
            "build time",
        ],  # fmt: skip
        rows,
        [
            "Targets (CPU, IN-1K size, batch 1): eager >= 1.3x the landed eager; the best runtime >= 2x the landed "
            "eager (median over configs).",
            f"landed: the forward of commit {LANDED}, same weights, in {args.landed_dtype or args.dtype}, timed in the "
            "same interleaved rounds.",
            "Fronts: (accuracy on the digits, p50) over the configs, each runtime's against eager's.",
            "build time: compiling (compile), exporting and opening sessions (onnxruntime), capturing (cudagraph).",
            "Timing on this shared 2-core VM is noisy; ratios within one run are what to read.",
        ],
    )


if __name__ == "__main__":
    main()
