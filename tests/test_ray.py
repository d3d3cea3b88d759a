"""The ray engine: one small end-to-end search on a local Ray, and its fast failure paths."""

import json
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
from adasearch.data.datasets import load_data
from adasearch.search import ray_engine
from adasearch.search.runner import run
from adasearch.spec import load_spec
from tests.helpers import write_run_spec

SPACE = {"num_tokens": [1, 8, 32], "depth": [1, 6], "mat_dim": [8, 32]}


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
    data = load_data("digits", limit=60)
    by_number = {t.number: t for t in trials}
    for f in files:
        config, doc = DeploymentConfig.load(f), yaml.safe_load(f.read_text())
        with torch.no_grad():
            hits = sum(int((model.run(x, config).logits.argmax(-1) == y).sum()) for x, y in data.batches(16))
        # The deployment's figures are the driver's re-measurement; the trial's are the worker's.
        assert doc["metrics"]["accuracy"] == pytest.approx(hits / 60)
        assert by_number[doc["trial"]].user_attrs["metrics"]["accuracy"] == pytest.approx(hits / 60)


def test_worker_context_is_prepared_once_per_process_and_never_opens_the_storage(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_engine, "prepare", lambda spec, storage: calls.append(storage) or object())
    monkeypatch.setattr(ray_engine, "_CONTEXTS", {})
    spec_json = json.dumps({"name": "once"})
    first = ray_engine._context(spec_json)
    assert ray_engine._context(spec_json) is first
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
