"""One script for a machine with a CUDA GPU, under 6 minutes: parity, the runtimes, targets, a search.

python bench/gpu_check.py                 # writes bench/results/gpu_check.md (and $OUT/gpu_check.md when set)

Steps (each bounded; a failing step is a row that says why, and the next step still runs):
1. parity: logits of cuda fp32 and bf16 (eager, and CUDA graph replay) against CPU fp32, on the demo model and
   a random model of the published layout: max |difference| and top-1 agreement, static and exit configs;
2. targets under cudagraph (bf16, CUDA events through interleaved rounds): demo full batch 1 <= 0.3 ms;
   IN-1K size 64 tokens depth 8 batch 1 <= 1.0 ms; IN-1K size full batch 32 <= 10 ms; eager beside each;
3. the runtimes table (bench/runtimes.py's case) on IN-1K-size configs, bf16, batch 1 and 32: eager and
   cudagraph (compile is timed on the target configs only: 12-31 s a compile);
4. the latency model under cudagraph (bench/latency_model.py's demo case, batch 1 and 32);
5. a demo search with hardware.runtime: cudagraph (examples/demo-cpu.yaml on cuda).
Baseline figures: shared/gpu-baseline.md.
"""

import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import AdaPerceiver, AdaPerceiverConfig, DeploymentConfig, load_model  # noqa: E402
from adasearch.measure.interleaved import time_interleaved  # noqa: E402
from adasearch.measure.latency import _synchronizer  # noqa: E402
from adasearch.model.released import RELEASED_IN1K as IN1K  # noqa: E402
from adasearch.runtimes import make_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
SMALL = dict(embed_dim=32, num_heads=4, depth=4, max_latent_tokens=16, ffn_ratio=2.57, mask_token_grans=[2, 4, 8, 16],
             mat_dims=[16, 24, 32], img_size=16, patch_size=4, in_channels=3, num_classes=7, use_embed_ffn=True,
             ls_init_values=1e-6)  # fmt: skip
rows = []


def step(name):
    def wrap(fn):
        start = time.time()
        try:
            fn()
        except Exception as e:  # a bench: record why a step failed and go on to the next
            traceback.print_exc()
            rows.append([name, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:150]}", ""])
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
        return fn

    return wrap


def parity():
    torch.manual_seed(0)
    for label, model in (("demo", load_model("demo")), ("small random", AdaPerceiver(AdaPerceiverConfig(**SMALL)))):
        model = model.eval()
        c = model.cfg
        x = torch.rand(16, c.in_channels, c.img_size, c.img_size)
        for knobs in ({}, {"num_tokens": 8, "depth": 3}, {"depth_tau": 0.5}):
            plan = model.plan(**knobs)
            ref = model.forward_plan(x, plan).logits
            for dtype in (torch.float32, torch.bfloat16):
                gpu = AdaPerceiver(c).to(CUDA, dtype).eval()
                gpu.load_state_dict(model.state_dict())
                xs = x.to(CUDA, dtype)
                for rt in ("eager", "cudagraph"):
                    out = make_runtime(rt, gpu, CUDA).forward(plan, xs)(xs).float().cpu()
                    diff = float((out - ref).abs().max())
                    agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
                    rows.append([f"parity {label} {knobs or 'full'}", f"{rt} {str(dtype)[6:]}",
                                 f"max diff {diff:.2e}, top-1 agree {agree:.0%}", ""])  # fmt: skip


def p50s(model, items, batch, budget=0.5):
    fns = [fn for _, fn in items]
    timed = time_interleaved(fns, [batch], sync=_synchronizer(CUDA), budget_s=budget, rounds=6)
    return {name: t["latency_p50_ms"] for (name, _), t in zip(items, timed)}


def targets():
    demo = load_model("demo").to(CUDA, torch.bfloat16).eval()
    torch.manual_seed(0)
    big = AdaPerceiver(AdaPerceiverConfig(**IN1K)).to(CUDA, torch.bfloat16).eval()
    cases = [
        ("demo full, batch 1", demo, DeploymentConfig(), 1, 0.3),
        ("IN-1K size 64 tokens depth 8, batch 1", big, DeploymentConfig(num_tokens=64, depth=8), 1, 1.0),
        ("IN-1K size full, batch 32", big, DeploymentConfig(), 32, 10.0),
    ]
    for name, model, config, b, target in cases:
        c = model.cfg
        x = torch.rand(b, c.in_channels, c.img_size, c.img_size, device=CUDA, dtype=torch.bfloat16)
        plan = model.plan(**config.to_dict())
        items = [(rt, make_runtime(rt, model, CUDA).forward(plan, x)) for rt in ("eager", "cudagraph")]
        if name.startswith("demo") or "64 tokens" in name:
            compiled = make_runtime("compile", model, CUDA)
            items.append(("compile", compiled.forward(plan, x)))
        got = p50s(model, items, x)
        met = "met" if got["cudagraph"] <= target else "MISSED"
        detail = ", ".join(f"{k} {v:.3f} ms" for k, v in got.items())
        rows.append([f"target {name}", f"cudagraph <= {target} ms", detail, met])


def runtimes_table():
    import runtimes as bench_runtimes

    torch.manual_seed(0)
    big = AdaPerceiver(AdaPerceiverConfig(**IN1K)).to(CUDA, torch.bfloat16).eval()
    configs = bench_runtimes.random_static(big.cfg, 16, seed=1)
    for b in (1, 32):
        x = torch.randn(b, 3, 224, 224, device=CUDA, dtype=torch.bfloat16)
        for r in bench_runtimes.case(f"IN-1K size, batch {b}", big, configs, x, ["eager", "cudagraph"], CUDA, 0.3, 4):
            rows.append([f"runtimes {r[0]}", r[1], f"median p50 {r[3]} ms, eager/it {r[5]}, tau {r[6]}", r[4]])


def run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def latency_model():
    args = ["--quick", "--device", "cuda", "--dtype", "bfloat16", "--runtime", "cudagraph", "--batch-sizes", "1", "32"]
    proc = run([sys.executable, "bench/latency_model.py", *args, "--name", "latency_model_cudagraph"], 150)
    table = (ROOT / "bench/results/latency_model_cudagraph.md").read_text() if proc.returncode == 0 else proc.stderr
    for line in table.splitlines():
        if line.startswith("| demo"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append(
                [f"latency model {cells[0]}", "cudagraph bf16", f"p50 within ±10 %: {cells[4]} (re-anchored)", ""]
            )


def search():
    spec = yaml.safe_load((ROOT / "examples/demo-cpu.yaml").read_text())
    spec["hardware"].update(device="cuda", runtime="cudagraph")
    out = Path(tempfile.mkdtemp())
    spec["output"] = str(out / "run")
    (out / "spec.yaml").write_text(yaml.safe_dump(spec))
    start = time.time()
    proc = run([sys.executable, "-m", "adasearch.cli", "run", str(out / "spec.yaml"), "--no-progress"], 180)
    front = yaml.safe_load((out / "run" / "run.yaml").read_text()) if proc.returncode == 0 else None
    rows.append(["demo search, runtime cudagraph", f"rc {proc.returncode}", f"{time.time() - start:.0f} s",
                 (proc.stderr.strip().splitlines() or [""])[-1][:150] if front is None else "completed"])  # fmt: skip


def main():
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py needs a CUDA GPU")
    rows.append(["device", torch.cuda.get_device_name(0), f"torch {torch.__version__}", ""])
    for name, fn in (("parity", parity), ("targets", targets), ("runtimes", runtimes_table),
                     ("latency model", latency_model), ("search", search)):  # fmt: skip
        step(name)(fn)
    text = save_table("gpu_check", "GPU check (bench/gpu_check.py)", ["check", "what", "figures", "result"], rows,
                      ["Baseline: shared/gpu-baseline.md. Targets from the runtimes issue."])  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.md").write_text(text)


if __name__ == "__main__":
    main()
