"""Timing on the target: a two-node Ray cluster on this machine (tests/ray_cluster_helpers.py).

The head runs in one network namespace, the worker node in another with the target resource and a
private tmpfs over the run's output folder (its own disk, as a second machine has). The driver runs
in the head's namespace with --ray-address. Every timed trial must run on the worker node, be
recorded once by the driver, and nothing may reach the worker node's copy of the output folder.
About 30 s; it needs root and `ip netns`, and says loudly why when it skips.
"""

import csv
import json
import sys
import warnings

import optuna
import pytest
import yaml

from tests.helpers import write_run_spec
from tests.ray_cluster_helpers import RESOURCE, two_node_cluster, unavailable

SPACE = {"num_tokens": [1, 8, 32], "depth": [1, 6], "mat_dim": [8, 32]}
TRIALS = 6


@pytest.fixture(scope="module")
def cluster_ok():
    reason = unavailable()
    if reason:
        warnings.warn(f"SKIPPED the two-node Ray cluster test: {reason}", stacklevel=1)
        pytest.skip(f"two-node Ray cluster: {reason}")


def adasearch(cluster, spec, cache) -> tuple:
    """`adasearch run SPEC --ray-address HEAD` in the head's namespace: (exit code, output)."""
    args = [sys.executable, "-m", "adasearch.cli", "run", str(spec), "--ray-address", cluster.address, "--no-progress"]
    done = cluster.head_run(args, ADASEARCH_CACHE=str(cache))
    return done.returncode, done.stdout


def test_timed_trials_run_on_the_target_node_and_only_the_driver_writes(tmp_path, cluster_ok):
    timed = write_run_spec(
        tmp_path / "timed",
        SPACE,
        name="cluster",
        objectives=("accuracy", "latency_p50_ms"),
        limit=40,
        hardware={"ray_resource": RESOURCE, "threads": 1},
        engine="ray",
        trials=TRIALS,
        workers=2,  # two trials at a time could run, but the target node has one unit: one timed at a time
    )
    missing = write_run_spec(
        tmp_path / "missing", SPACE, name="missing", objectives=("accuracy", "latency_p50_ms"), limit=40,
        hardware={"ray_resource": "gpu_box"}, engine="ray", trials=2,
    )  # fmt: skip
    out = tmp_path / "timed" / "out"
    out.mkdir()  # the worker node mounts its private tmpfs over it
    with two_node_cluster(out) as cluster:
        assert cluster.worker_id != cluster.head_id
        code, output = adasearch(cluster, timed, tmp_path / "cache")
        assert code == 0, f"{output}\n{cluster.logs()}"
        # The worker node's own disk: a tmpfs that nothing was written to (only the driver writes results).
        assert cluster.on_worker(["stat", "-f", "-c", "%T", str(out)]).strip() == "tmpfs"
        assert cluster.on_worker(["ls", "-A", str(out)]) == ""

        # A resource no node has: one line at once, naming the key and what the cluster has.
        code, output = adasearch(cluster, missing, tmp_path / "cache")
        assert code == 2, output
        lines = output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), output
        assert "hardware.ray_resource" in lines[0] and "'gpu_box'" in lines[0]
        assert RESOURCE in lines[0] and "CPU" in lines[0]

    # Every trial is in the driver's storage exactly once, and there are as many as asked for.
    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * TRIALS
    assert sorted(t.number for t in study.trials) == list(range(TRIALS))
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["trial"]) for r in rows) == list(range(TRIALS))
    # Every trial was timed, on the target node (its Ray node id, not the head's, not a hostname).
    assert all(t.user_attrs["metrics"].get("latency_p50_ms") is not None for t in study.trials)
    assert {t.user_attrs["measured_on"] for t in study.trials} == {cluster.worker_id}
    assert {r["measured_on"] for r in rows} == {cluster.worker_id}
    # The finalists' longer re-timing ran on the target node too, and the accuracy passes as Ray tasks.
    notes = yaml.safe_load((out / "run.yaml").read_text())["notes"]
    assert f"finalists re-timed on Ray node {cluster.worker_id} (it holds {RESOURCE}, the target)" in notes, notes
    assert any("Ray tasks" in n and "data shards" in n for n in notes), notes
    assert json.loads((out / "pareto.json").read_text())["pareto"][0]["metrics"]["latency_p50_ms_ci_low"] > 0
