"""The ray engine: one small end-to-end search on a local Ray, and its fast failure paths."""

import json
import shutil
import socket
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

from adasearch import DeploymentConfig, load_model
from adasearch.cli import main
from adasearch.search.context import prepare
from adasearch.search.engines import ray as ray_engine
from adasearch.search.engines import ray_accuracy
from adasearch.search.runner import run
from adasearch.spec import load_spec
from tests.helpers import write_run_spec

SPACE = {"num_tokens": [1, 8, 32], "depth": [1, 6], "mat_dim": [8, 32]}
SETTINGS = [DeploymentConfig(num_tokens=32, mat_dim=w) for w in (8, 32)]  # one per width setting of SPACE


def write_spec(tmp_path, **search) -> str:
    # accuracy vs gmacs, no latency: fast and deterministic
    return str(write_run_spec(tmp_path, SPACE, name="ray", limit=60, engine="ray", **search))


def test_ray_search_end_to_end(tmp_path, monkeypatch):
    # conftest sets ADASEARCH_CACHE before Ray starts, so the worker processes inherit it too.
    ray_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setattr(ray_engine, "TEMP_PREFIX", str(ray_temp))
    # final_latency_budget_s: the runner re-times each Pareto config afterwards; keep that short.
    spec = load_spec(write_spec(tmp_path, trials=6, workers=2, final_latency_budget_s=0.01))
    summary = run(spec, progress=False)
    assert not summary.interrupted
    # Accuracy ran as Ray tasks, 2 width settings x 2 data shards, merged into the driver's cache: its
    # integer tables are byte for byte those of one pass in one process.
    assert any("4 Ray tasks (2 width settings x 2 data shards)" in n for n in summary.notes), summary.notes
    engine = prepare(spec, storage=False).measurer.evaluator.accuracy
    assert not engine.missing_tables(SETTINGS), "the merged tables are in the driver's cache"
    for rep in SETTINGS:
        merged, single = engine.table(rep), engine.anytime_table(rep)  # cached (merged) vs computed now
        for name in ("pred", "in_top5", "prefixes"):
            assert merged[name].dtype == single[name].dtype
            assert merged[name].numpy().tobytes() == single[name].numpy().tobytes(), name
        torch.testing.assert_close(merged["conf"], single["conf"])
    assert list(ray_temp.iterdir()) == []  # Ray's session folder and Tune's files are gone
    ray_temp.rmdir()

    out = tmp_path / "out"
    study = optuna.load_study(study_name="ray", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) >= 6
    assert all({"config", "metrics", "measured_on"} <= set(t.user_attrs) for t in trials)
    # Measured in Ray's workers (on the one local node, by its Ray node id), recorded by the driver;
    # never a hostname.
    nodes = {t.user_attrs["measured_on"] for t in trials}
    assert len(nodes) == 1 and "local" not in nodes and socket.gethostname() not in nodes
    assert len(next(iter(nodes))) == 56  # a Ray node id: 28 bytes in hex
    assert "measured_on" in (out / "trials.csv").read_text().splitlines()[0]

    pareto = json.loads((out / "pareto.json").read_text())["pareto"]
    files = sorted((out / "deployments").glob("*.yaml"))
    assert pareto and len(files) == len(pareto)
    model = load_model("demo")
    data = prepare(spec, storage=False).measurer.evaluator.data  # the images the search measured
    by_number = {t.number: t for t in trials}
    for f in files:
        config, doc = DeploymentConfig.load(f), yaml.safe_load(f.read_text())
        with torch.no_grad():
            hits = sum(int((model.run(x, config).logits.argmax(-1) == y).sum()) for x, y in data.batches(16))
        # The deployment's figures are the driver's re-measurement; the trial's are the worker's.
        assert doc["metrics"]["accuracy"] == pytest.approx(hits / len(data))
        assert by_number[doc["trial"]].user_attrs["metrics"]["accuracy"] == pytest.approx(hits / len(data))


def test_worker_context_is_prepared_once_per_process_and_never_opens_the_storage(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_accuracy, "prepare", lambda spec, storage: calls.append(storage) or object())
    monkeypatch.setattr(ray_accuracy, "_CONTEXTS", {})
    spec_json = json.dumps({"name": "once"})
    first = ray_accuracy.worker_context(spec_json)
    assert ray_accuracy.worker_context(spec_json) is first
    assert calls == [False]  # one load, and no storage: only the driver writes trials


def test_unreachable_ray_address_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    result = CliRunner().invoke(
        main, ["run", write_spec(tmp_path, trials=2), "--ray-address", address, "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and lines[0].startswith("error: ")


def short_ray_temp(monkeypatch) -> Path:
    ray_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setattr(ray_engine, "TEMP_PREFIX", str(ray_temp))
    return ray_temp


def test_ray_resource_on_a_local_run_changes_nothing(tmp_path, monkeypatch):
    # Without a cluster this machine is the target: the local Ray advertises one unit per worker, so the
    # timed trials run as they would without ray_resource, on the local node.
    ray_temp = short_ray_temp(monkeypatch)
    spec = load_spec(
        write_run_spec(
            tmp_path, SPACE, name="local", objectives=("accuracy", "latency_p50_ms"), limit=40,
            hardware={"ray_resource": "target_cpu"}, engine="ray", trials=3, workers=2,
        )
    )  # fmt: skip
    assert spec.hardware.ray_resource == "target_cpu"
    summary = run(spec, progress=False)
    assert not summary.interrupted
    ray_temp.rmdir()
    study = optuna.load_study(study_name="local", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 3 and all(t.user_attrs["metrics"].get("latency_p50_ms") is not None for t in trials)
    nodes = {t.user_attrs["measured_on"] for t in trials}
    assert len(nodes) == 1 and len(next(iter(nodes))) == 56  # the local node's Ray id
    assert yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())["spec"]["hardware"]["ray_resource"] == (
        "target_cpu"
    )


def test_a_ray_resource_no_node_has_is_one_line(tmp_path, monkeypatch):
    # A Ray that is already running (as a notebook's would be) and lacks the resource: refused before
    # any trial, in one line naming the key and what the cluster has (on a cluster, the same check
    # runs after joining it: tests/test_ray_cluster.py).
    import ray

    ray_temp = short_ray_temp(monkeypatch)
    spec = write_run_spec(
        tmp_path, SPACE, name="missing", objectives=("accuracy", "latency_p50_ms"), limit=40,
        hardware={"ray_resource": "target_cpu"}, engine="ray", trials=2,
    )  # fmt: skip
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(ray_temp), log_to_driver=False)
    try:
        result = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    finally:
        ray.shutdown()
    shutil.rmtree(ray_temp, ignore_errors=True)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "hardware.ray_resource" in lines[0] and "'target_cpu'" in lines[0] and "CPU" in lines[0]


def test_ray_resource_is_a_plain_name(tmp_path):
    spec = write_run_spec(tmp_path, SPACE, hardware={"ray_resource": "target cpu"}, engine="ray")
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "hardware.ray_resource" in lines[0] and "letters, digits, _ and -" in lines[0]
