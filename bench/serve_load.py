"""Load on `adasearch serve` over loopback: throughput, latency and how often budgets are met.

    python bench/serve_load.py [RUN_FOLDER]      # default results/demo-cpu (made first if missing)

Starts the server as a separate process on a free 127.0.0.1 port, then sends a bounded number of
requests (N_REQUESTS per budget, CONCURRENCY at a time) with one real digit each, and stops it.
"""

import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch.data.digits import digits  # noqa: E402
from adasearch.serving import Deployment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_REQUESTS, CONCURRENCY = 200, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(run_folder: str = "results/demo-cpu"):
    run = Path(run_folder)
    if not (run / "pareto.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "run",
                str(ROOT / "examples/demo-cpu.yaml"),
                "-o",
                str(run),
                "--no-progress",
            ],
            check=True,
        )
    latencies = sorted(e.metrics["latency_p90_ms"] for e in Deployment.load(run).configs)
    # budgets: below every config, at the fastest, between, and above every config
    budgets = [None, latencies[0] / 2, latencies[0] * 1.05, latencies[len(latencies) // 2] * 1.05, latencies[-1] * 2]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", str(run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    x = digits("val")[0]
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(100):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            for budget in budgets:

                def one(i, budget=budget):
                    body = {"inputs": x[i % len(x)].tolist()}
                    if budget is not None:
                        body["budget_ms"] = budget
                    t0 = time.perf_counter()
                    r = client.post("/predict", json=body)
                    return (time.perf_counter() - t0) * 1000, r.json()

                start = time.perf_counter()
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    results = list(pool.map(one, range(N_REQUESTS)))
                wall = time.perf_counter() - start
                ms = sorted(r[0] for r in results)
                p50, p99 = statistics.median(ms), ms[int(0.99 * (len(ms) - 1))]
                fits = sum(r[1]["within_budget"] for r in results) / len(results)
                met = sum(t <= budget for t, _ in results) / len(results) if budget else None
                configs = sorted({r[1]["config_name"] for r in results})
                rows.append(
                    [
                        "none" if budget is None else f"{budget:.3f}",
                        f"{N_REQUESTS / wall:.0f}",
                        f"{p50:.2f}",
                        f"{p99:.2f}",
                        f"{100 * fits:.0f}%",
                        "-" if met is None else f"{100 * met:.0f}%",
                        ", ".join(c[c.index("-N") + 1 :] for c in configs),
                    ]
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    save_table(
        "serve_load",
        f"adasearch serve on loopback: {N_REQUESTS} requests per budget, {CONCURRENCY} concurrent, batch 1",
        [
            "budget ms",
            "req/s",
            "p50 ms",
            "p99 ms",
            "config fits (measured p90)",
            "request time <= budget",
            "config used",
        ],
        rows,
        [
            "'config fits': the chosen config's measured p90 model latency is within the budget.",
            "'request time <= budget': the whole HTTP round trip (JSON encode, network, queueing behind "
            "the one-forward-at-a-time lock, decode) met the budget; it is stricter than the model's latency.",
            f"Run folder: {run}.",
        ],
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
