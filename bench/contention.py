"""How busy does the machine look to a run, with 0, 1, 2 ... CPU burners beside it, and what does it do to
the timed figures? The evidence for measure/contention.py's BUSY_SHARE.

python bench/contention.py

Each row: a short timed run of the demo (a 4-network space, 1 thread, exhaustive, re-timed interleaved) as
its own process, beside N burner processes (busy loops, killed by PID after the run). The background share
is what a 2-s probe saw before the burners started (other users of the machine).
"""

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _table import save_table  # noqa: E402

from adasearch.measure.contention import BUSY_SHARE, ContentionMonitor  # noqa: E402
from tests.helpers import cpu_burners  # noqa: E402

SPACE = {"knobs": {"num_tokens": [1, 32], "depth": [1, 6]}}


@contextlib.contextmanager
def burners(n: int):
    with cpu_burners(n, seconds=300):
        time.sleep(0.5)  # they start
        yield


def background() -> float:
    probe = ContentionMonitor()
    with probe.window():
        time.sleep(2)
    return probe.summary()["other_cpu_share"]


def one_run(folder: Path, n: int) -> list:
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    spec = {
        "name": f"contention{n}",
        "model": "demo",
        "data": {"source": "digits", "limit": 100},
        "hardware": {"threads": 1},
        "objectives": ["accuracy", "latency_p50_ms"],
        "search": {"space": "space.yaml", "engine": "exhaustive", "final_latency_budget_s": 0.5},
        "output": str(folder / "out"),
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    quiet = background()
    with burners(n):
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(folder / "spec.yaml"), "--no-progress"],
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run = yaml.safe_load((folder / "out" / "run.yaml").read_text())
    c = run["environment"]["contention"]
    import csv

    rows = list(csv.DictReader((folder / "out" / "trials.csv").open()))
    p50 = min(float(r["latency_p50_ms"]) for r in rows if r["config"] == "N1-wfull-d1")
    return [n, f"{quiet:.2f}", f"{c['other_cpu_share']:.2f}", f"{c['load_avg']:.1f}", f"{c['reference_cv']:.3f}",
            f"{c['inflation']:.0%}", f"{p50:.3f}", "yes" if c["other_cpu_share"] > BUSY_SHARE else "no"]  # fmt: skip


def main():
    rows = []
    for n in (0, 1, 2, 2 * (os.cpu_count() or 1)):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_run(Path(tmp), n))
    save_table(
        "contention",
        f"Contention seen by a run beside N CPU burners ({os.cpu_count()} CPUs; demo, 1 thread)",
        [
            "burners",
            "background share before",
            "other_cpu_share",
            "load avg",
            "reference CV",
            "inflation",
            "p50 ms of N1-d1",
            "warned",
        ],  # fmt: skip
        rows,
        notes=[
            f"warned: other_cpu_share > BUSY_SHARE = {BUSY_SHARE} (measure/contention.py)",
            "inflation: the re-timed configs' median round over their quietest round, minus 1 (median over configs)",
            "background share: others' CPU share over 2 s before the burners started (this machine is shared)",
        ],
    )


if __name__ == "__main__":
    main()
