"""The ray engine on a two-node Ray cluster on this machine against a local Ray: wall time, trials per
second, and where the trials were measured.

python bench/cluster.py [--trials 30] [--repeats 3]   (root: the cluster's nodes live in network namespaces)

The demo search (examples/demo-cpu.yaml: its space, data, constraints and objectives accuracy and
latency_p50_ms) with the ray engine, 2 workers and `hardware.ray_resource: target_cpu`, run through
`adasearch run` in four setups, each run with a fresh accuracy cache and results folder:
- local: a local Ray on loopback (this machine is the target: it advertises one unit per worker),
  with 2 workers and with 1 (one timed trial at a time, as on the cluster's target);
- cluster: tests/ray_cluster_helpers.py's two nodes (head, and a worker node with `target_cpu: 1`),
  the driver on the head with --ray-address;
- cluster, accuracy only: the same with objectives accuracy and gmacs, which time nothing and so ask
  for no resource: its trials may run on either node.
"""

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _table import save_table  # noqa: E402

from tests.ray_cluster_helpers import RESOURCE, ray_env, two_node_cluster, unavailable  # noqa: E402


def write_spec(folder: Path, trials: int, timed: bool, workers: int = 2) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "demo-cpu.yaml").read_text())
    spec["name"] = "bench-cluster"
    spec["hardware"]["ray_resource"] = RESOURCE
    if not timed:
        spec["constraints"] = {"accuracy": {"min": 0.90}}
        spec["objectives"] = [
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "gmacs", "direction": "minimize"},
        ]
    spec["search"].update(engine="ray", trials=trials, workers=workers, final_latency_budget_s=0.2)
    spec["output"] = str(folder / "out")
    folder.mkdir(parents=True)
    (folder / "out").mkdir()
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def command(spec: Path, address=None) -> list:
    args = [sys.executable, "-m", "adasearch.cli", "run", str(spec), "--no-progress"]
    return args + (["--ray-address", address] if address else [])


def measured(out: Path, target) -> dict:
    """From the results folder: trials, the share measured on the target node (None: the one node the
    local run had), and the search's pace: trials recorded per second between the first and the last
    (each is recorded by the driver when its result arrives), which leaves out start-up and the end."""
    import optuna

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    nodes = [r["measured_on"] for r in rows]
    target = target or nodes[0]
    study = optuna.load_study(study_name="bench-cluster", storage=f"sqlite:///{out / 'study.db'}")
    done = sorted(t.datetime_complete for t in study.trials)
    span = (done[-1] - done[0]).total_seconds()
    return {
        "nodes": nodes,
        "networks": len({r["config"] for r in rows}),
        "on_target": sum(n == target for n in nodes) / len(nodes),
        "pace": (len(done) - 1) / span,
    }


def run_local(folder: Path, trials: int, workers: int) -> dict:
    spec = write_spec(folder, trials, timed=True, workers=workers)
    start = time.perf_counter()
    done = subprocess.run(command(spec), env=ray_env(ADASEARCH_CACHE=str(folder / "cache")), capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {"wall": wall, "startup": None, **measured(folder / "out", None)}


def run_cluster(folder: Path, trials: int, timed: bool) -> dict:
    spec = write_spec(folder, trials, timed)
    start = time.perf_counter()
    with two_node_cluster(folder / "out") as cluster:
        startup = time.perf_counter() - start
        start = time.perf_counter()
        done = cluster.head_run(command(spec, cluster.address), ADASEARCH_CACHE=str(folder / "cache"))
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{done.stdout[-3000:]}\n{cluster.logs()}")
        return {"wall": wall, "startup": startup, **measured(folder / "out", cluster.worker_id)}


SETUPS = [  # name, how, timed trials at once
    ("local Ray (1 node), 2 workers", lambda f, n: run_local(f, n, 2), "2 (one unit per worker)"),
    ("local Ray (1 node), 1 worker", lambda f, n: run_local(f, n, 1), "1"),
    ("2-node cluster, timed", lambda f, n: run_cluster(f, n, True), "1 (one unit on the target)"),
    ("2-node cluster, accuracy only", lambda f, n: run_cluster(f, n, False), "2 (no resource asked)"),
]


def runs(base: Path, trials: int, repeats: int) -> list:
    """Every setup `repeats` times, in rounds (a change of the machine's load hits every setup alike)."""
    results = {name: [] for name, _, _ in SETUPS}
    for r in range(repeats):
        for i, (name, how, _) in enumerate(SETUPS):
            results[name].append(how(base / f"{i}-{r}", trials))
    rows = []
    for name, _, at_once in SETUPS:
        got = results[name]
        wall = statistics.median(g["wall"] for g in got)
        n = statistics.median(len(g["nodes"]) for g in got)
        networks = statistics.median(g["networks"] for g in got)
        share = sum(g["on_target"] * len(g["nodes"]) for g in got) / sum(len(g["nodes"]) for g in got)
        startup = (
            "in wall s" if got[0]["startup"] is None else f"{statistics.median(g['startup'] for g in got):.1f} s apart"
        )
        pace = statistics.median(g["pace"] for g in got)
        rows.append(
            [
                name,
                f"{n:g} ({networks:g})",
                f"{wall:.1f}",
                f"{n / wall:.2f}",
                f"{pace:.2f}",
                f"{share:.0%}",
                at_once,
                startup,
            ]
        )
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trials, repeats = args.trials, args.repeats
    reason = unavailable()
    if reason:
        sys.exit(f"bench/cluster.py: {reason}")
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    load = [os.getloadavg()[0]]
    try:
        rows = runs(base, trials, repeats)
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)

    save_table(
        "cluster",
        f"ray engine: local Ray vs a 2-node Ray cluster on one machine, demo space, {trials} trials, "
        f"median of {repeats} runs",
        [
            "run",
            "trials (networks)",
            "wall s",
            "trials/s (wall)",
            "trials/s (search)",
            "measured on the target node",
            "timed trials at once",
            "Ray start-up",
        ],
        rows,
        notes=[
            "This machine has 2 CPU cores: both cluster nodes (network namespaces joined by a veth pair, 1 CPU "
            "each) and the driver share them, so this is a correctness and overhead figure, not a speed-up.",
            "Wall time is the whole `adasearch run` (start-up, starting or joining Ray, the accuracy passes as Ray "
            "tasks, the search, re-timing the Pareto candidates with final_latency_budget_s 0.2 (on the target "
            "node in the timed cluster row, in the driver otherwise), the held-out report, writing the folder); "
            "each run starts with an empty accuracy cache. A local run starts its Ray inside that time; "
            "a cluster run joins nodes already started (their start-up, namespaces included, is the last column). "
            "trials/s (search): trials recorded between the first and the last recorded one, per second: the "
            "search's pace without start-up and the end. A trial that repeats a network measured before "
            "(TPE proposes some) is recorded with the stored figures, unmeasured: (networks) counts the distinct "
            "ones.",
            "Timed runs ask each trial for one unit of hardware.ray_resource (target_cpu): the target node has "
            "one, so its trials are timed one at a time; the local Ray advertises one per worker, so a local "
            "run is unchanged by ray_resource. A spec that times nothing asks for no resource: its trials run "
            "on either node.",
            f"Load average (1 min) before and after: {load[0]:.1f} and {load[1]:.1f}; anything else running on "
            "the 2 cores slows every row, so compare rows of one table only.",
            f"Spec: examples/demo-cpu.yaml with engine ray, trials {trials}, workers 2 (but the second row), "
            "ray_resource target_cpu (accuracy-only row: objectives accuracy and gmacs, constraint accuracy >= 0.90). "
            "The 1-worker local row times one trial at a time, as the cluster's target does: its search pace "
            "against the timed cluster row's is the cluster's overhead (more Ray processes on the same 2 cores, "
            "results crossing the veth).",
        ],
    )


if __name__ == "__main__":
    main()
