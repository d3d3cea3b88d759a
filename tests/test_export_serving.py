"""`adasearch export`, the pick language and serving: one real run, exported and served."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adasearch import DeploymentConfig, load_model
from adasearch.cli import main
from adasearch.data.datasets import load_data
from adasearch.errors import InputError, UserError
from adasearch.serving import Deployment
from tests.helpers import write_run_spec

SPACE = {"num_tokens": [1, 8, 32], "depth": [1, 6], "mat_dim": [8, 32]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One small real results folder for the whole module (a few seconds)."""
    root = tmp_path_factory.mktemp("run")
    # gmacs makes the front deterministic (>= 2 points) even where sub-ms timing is noise
    spec = write_run_spec(
        root,
        SPACE,
        limit=80,
        hardware={"threads": 1},
        objectives=[{"accuracy": "max"}, {"gmacs": "min"}, {"latency_p50_ms": "min"}],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(root / "cache"))
        r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    front = pareto_rows(root / "out")
    assert len(front) >= 2, "the budget tests need a front with a choice"
    return root / "out"


def pareto_rows(run_dir) -> list:
    return json.loads((run_dir / "pareto.json").read_text())["pareto"]


@pytest.fixture(scope="module")
def images():
    x, _ = next(iter(load_data("digits", limit=16, img_size=8, channels=1).batches(16)))
    return x


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def p90(row) -> float:
    return row["metrics"]["latency_p90_ms"]


def most_accurate(rows) -> dict:
    """The documented choice: the most accurate; between equally accurate configs, the faster (p90)."""
    return max(rows, key=lambda row: (row["metrics"]["accuracy"], -p90(row)))


# ---------------------------------------------------------------- run -> export -> serve


def test_exported_config_serves_the_same_predictions_as_a_direct_forward(run_dir, images, tmp_path):
    out = tmp_path / "picked.yaml"
    r = export(run_dir, "--pick", "min latency_p50_ms where accuracy >= 0.5", "-o", out)
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(out.read_text())
    fastest = min(pareto_rows(run_dir), key=lambda row: row["metrics"]["latency_p50_ms"])
    # the same document the run wrote for that config
    assert doc == yaml.safe_load((run_dir / "deployments" / fastest["name"]).read_text())

    served = Deployment.load(out).predict(images)
    config = DeploymentConfig.from_dict(fastest["config"])
    with torch.inference_mode():
        direct = load_model("demo").run(images, config)
    assert served.config == config and served.within_budget
    assert torch.equal(served.classes, direct.logits.argmax(-1))
    assert torch.allclose(served.logits, direct.logits, atol=1e-6)
    assert torch.equal(served.exit_depth, direct.exit_depth)
    assert served.latency_p50_ms == fastest["metrics"]["latency_p50_ms"] and served.latency_p90_ms == p90(fastest)
    values, indices = served.probs
    assert values.shape == indices.shape == (16, 5)
    assert torch.equal(indices[:, 0], served.classes)
    assert torch.allclose(values, direct.logits.softmax(-1).topk(5).values)


def test_run_folder_loads_every_pareto_config_and_one_model(run_dir, images):
    net = load_model("demo")
    dep = Deployment.load(run_dir, model=net)
    rows = pareto_rows(run_dir)
    assert dep.model is net
    assert [(e.name + ".yaml", e.config.to_dict(), e.metrics, e.guarantee) for e in dep.configs] == [
        (row["name"], row["config"], row["metrics"], row.get("guarantee")) for row in rows
    ]
    one = dep.predict(images[0])  # a single (C, H, W) image is a batch of one
    assert one.logits.shape == (1, 10)
    assert torch.allclose(one.logits, dep.predict(images).logits[:1], atol=1e-6)
    with pytest.raises(InputError, match="channel"):
        dep.predict(torch.zeros(2, 3, 8, 8))
    with pytest.raises(InputError, match="empty batch"):
        dep.predict(torch.zeros(0, 1, 8, 8))


# ---------------------------------------------------------------- budgets


def test_without_or_with_a_huge_budget_the_most_accurate_config(run_dir, images):
    dep = Deployment.load(run_dir)
    best = most_accurate(pareto_rows(run_dir))
    for budget in (None, 1e9):
        p = dep.predict(images, budget_ms=budget)
        assert p.config_name + ".yaml" == best["name"] and p.within_budget


def test_a_budget_below_every_latency_gives_the_tightest_config(run_dir, images):
    tightest = min(pareto_rows(run_dir), key=p90)
    p = Deployment.load(run_dir).predict(images, budget_ms=p90(tightest) / 2)
    assert p.config_name + ".yaml" == tightest["name"] and not p.within_budget


def test_a_budget_in_between_gives_the_most_accurate_config_that_fits(run_dir, images):
    rows = pareto_rows(run_dir)
    latencies = sorted({p90(row) for row in rows})
    budget = (latencies[-2] + latencies[-1]) / 2  # all but the slowest (by p90) fit
    fits = [row for row in rows if p90(row) <= budget]
    expected = most_accurate(fits)
    p = Deployment.load(run_dir).predict(images, budget_ms=budget)
    assert p.config_name + ".yaml" == expected["name"] and p.within_budget
    assert p.latency_p90_ms <= budget


# ---------------------------------------------------------------- export


def test_export_as_kwargs_prints_the_reference_kwargs(run_dir, tmp_path):
    r = export(run_dir, "--pick", "max accuracy", "--as-kwargs")
    assert r.exit_code == 0, r.output
    best = most_accurate(pareto_rows(run_dir))
    expected = DeploymentConfig.from_dict(best["config"]).reference_kwargs()
    assert json.loads(r.stdout) == expected
    out = tmp_path / "kwargs.json"
    assert export(run_dir, "--pick", "max accuracy", "--as-kwargs", "-o", out).exit_code == 0
    assert json.loads(out.read_text()) == expected


def test_export_without_output_prints_the_yaml(run_dir):
    r = export(run_dir, "--pick", "max accuracy")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.stdout)
    assert list(doc) == ["config", "metrics", "model", "hardware", "data", "macs_convention", "trial"]
    assert doc["model"] == "demo"


@pytest.mark.parametrize(
    "where, expr, message",
    [
        ("missing", "max accuracy", "no such results folder"),
        ("empty", "max accuracy", "no pareto.json"),
        ("run", "max accuracy where", "expected a metric name"),
        ("run", "max acc", "unknown metric 'acc'"),
        ("run", "max accuracy where accuracy > 2", "no config satisfies"),
    ],
)
def test_export_errors_are_one_line_and_exit_2(run_dir, tmp_path, where, expr, message):
    folder = {"missing": tmp_path / "nope", "empty": tmp_path, "run": run_dir}[where]
    r = export(folder, "--pick", expr)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


# ---------------------------------------------------------------- loading


def test_a_relative_model_that_does_not_exist_asks_for_model(tmp_path, run_dir):
    doc = yaml.safe_load(next((run_dir / "deployments").iterdir()).read_text())
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({**doc, "model": "models/mine"}))
    with pytest.raises(UserError, match=r"'models/mine'.*pass model="):
        Deployment.load(path)
    assert Deployment.load(path, model="demo").configs[0].metrics == doc["metrics"]
    with pytest.raises(UserError, match="no such results folder or deployment YAML"):
        Deployment.load(tmp_path / "nope.yaml")


def test_serving_imports_no_search_engine():
    code = "import adasearch.serving, sys; assert not any(m.split('.')[0] in ('optuna', 'ray') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serving_runs_in_the_measured_dtype(run_dir, tmp_path):
    """A run measured in bfloat16 is served in bfloat16 unless dtype= says otherwise."""
    doc = yaml.safe_load(next((run_dir / "deployments").glob("*.yaml")).read_text())
    doc["hardware"]["dtype"] = "bfloat16"
    f = tmp_path / "bf16.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert next(Deployment.load(f).model.parameters()).dtype == torch.bfloat16
    assert next(Deployment.load(f, dtype="float32").model.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="dtype 'int8' is not allowed"):
        Deployment.load(f, dtype="int8")


def test_serving_runs_on_the_measured_device_or_says_why_not(run_dir, tmp_path):
    """A run timed on CUDA is not served on CPU by accident: its latencies would not hold."""
    doc = yaml.safe_load(next((run_dir / "deployments").glob("*.yaml")).read_text())
    doc["hardware"]["device"] = "cuda"
    f = tmp_path / "cuda.yaml"
    f.write_text(yaml.safe_dump(doc))
    if torch.cuda.is_available():
        assert next(Deployment.load(f).model.parameters()).device.type == "cuda"
    else:
        with pytest.raises(UserError, match=r"measured on device 'cuda'.*Pass device="):
            Deployment.load(f)
    dep = Deployment.load(f, device="cpu")
    assert next(dep.model.parameters()).device.type == "cpu" and dep.hardware["device"] == "cuda"
    with pytest.raises(UserError, match="device 'tpu'"):
        Deployment.load(f, device="tpu")


def test_serve_takes_the_runs_thread_count(run_dir):
    from adasearch.serving.http import load_for_serving

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        dep = load_for_serving(str(run_dir))  # the run measured with threads: 1
        assert dep.hardware["threads"] == 1 and torch.get_num_threads() == 1
        load_for_serving(str(run_dir), threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_deployment_files_in_json_load_and_malformed_ones_say_why(run_dir, tmp_path):
    doc = yaml.safe_load(next((run_dir / "deployments").glob("*.yaml")).read_text())
    f = tmp_path / "tabs.json"
    f.write_text(json.dumps(doc, indent="\t"))  # valid JSON that YAML cannot read (tabs)
    dep = Deployment.load(f)
    assert dep.configs[0].config == DeploymentConfig.from_dict(doc["config"])
    assert dep.configs[0].metrics == doc["metrics"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"config": {"num_tokens": 8,}}')
    with pytest.raises(UserError, match=r"bad.json: malformed JSON"):
        Deployment.load(bad)
    r = CliRunner().invoke(main, ["serve", str(bad)])
    assert r.exit_code == 2 and "malformed JSON" in r.output and "Traceback" not in r.output


def _edited_run(run_dir, tmp_path, edit) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    doc = yaml.safe_load((copy / "run.yaml").read_text())
    edit(doc)
    (copy / "run.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


def test_the_device_a_run_measured_on_wins_over_a_spec_that_said_auto(run_dir, tmp_path):
    def auto_on_cuda(doc):
        doc["spec"]["hardware"]["device"] = "auto"
        doc["environment"]["device"] = "cuda:0"

    copy = _edited_run(run_dir, tmp_path, auto_on_cuda)
    if torch.cuda.is_available():
        assert next(Deployment.load(copy).model.parameters()).device.type == "cuda"
    else:
        with pytest.raises(UserError, match="measured on device 'cuda:0'"):
            Deployment.load(copy)
    assert Deployment.load(copy, device="cpu").hardware["device"] == "cuda:0"


def test_a_run_of_a_hub_model_tries_the_hub_instead_of_calling_it_missing(run_dir, tmp_path):
    def hub(doc):
        doc["spec"]["model"] = "someorg/somemodel"

    copy = _edited_run(run_dir, tmp_path, hub)
    with pytest.raises(UserError, match=r"'someorg/somemodel'.*hub id: .*pass model="):
        Deployment.load(copy)  # offline or without huggingface_hub here: the hub loader says why


def test_a_model_path_relative_to_the_spec_is_recorded_so_serving_finds_it(tmp_path, monkeypatch):
    from adasearch.model.loading import save_model

    project = tmp_path / "project"
    save_model(load_model("demo"), project / "models" / "digits")
    (project / "space.yaml").write_text(yaml.safe_dump({"knobs": {"num_tokens": [1, 32], "depth": [1, 6]}}))
    (project / "spec.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "rel",
                "model": "models/digits",
                "data": {"source": "digits", "limit": 40},
                "objectives": ["accuracy", "gmacs"],
                "search": {"space": "space.yaml", "final_latency_budget_s": 0.01},
                "output": str(tmp_path / "out"),
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # not the spec's folder: the model path is relative to the spec
    r = CliRunner().invoke(main, ["run", "project/spec.yaml", "--no-progress"])
    assert r.exit_code == 0, r.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dep = Deployment.load(tmp_path / "out")
    assert dep.model.cfg == load_model("demo").cfg
    exported = next((tmp_path / "out" / "deployments").glob("*.yaml"))
    assert Path(yaml.safe_load(exported.read_text())["model"]) == (project / "models" / "digits").resolve()
    assert Deployment.load(exported).configs
