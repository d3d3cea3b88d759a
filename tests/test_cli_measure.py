"""`adasearch measure`: real measurements of the demo, and one-line errors for bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from adasearch import DeploymentConfig, load_model
from adasearch.cli import main
from tests.helpers import one_line_error


def _run(args, tmp_path):
    return CliRunner().invoke(main, ["measure", *args, "--cache-dir", str(tmp_path / "cache"), "--budget", "0.05"])


def test_measure_json_matches_direct_computation(tmp_path):
    r = _run(["demo", "--limit", "100", "--tokens", "8", "--depth", "3", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    model = load_model("demo")
    from adasearch.data.datasets import load_data

    data = load_data("digits", limit=100)
    with torch.inference_mode():
        correct = sum(
            (model.run(x, DeploymentConfig(num_tokens=8, depth=3)).logits.argmax(-1) == y).sum().item()
            for x, y in data.batches(50)
        )
    assert out["accuracy"] == pytest.approx(correct / 100)
    assert out["flops"] == 2 * out["macs"] and out["mean_exit_depth"] == 3.0
    assert out["latency_p50_ms"] <= out["latency_p90_ms"] <= out["latency_p99_ms"]
    assert out["throughput"] > 0 and out["memory_mb"] > 0
    assert out["env"]["torch"] == torch.__version__ and out["env"]["dtype"] == "float32"
    assert "multiply-add" in out["macs_convention"]


def test_measure_config_file_and_table(tmp_path):
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(DeploymentConfig(num_tokens=4, depth_tau=0.9).to_yaml())
    r = _run(["demo", "--limit", "60", "--config", str(cfg), "--batch-size", "4"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "top-1" in r.output and "per batch of 4" in r.output


def test_bad_inputs_get_one_line(tmp_path):
    assert "no such dataset" in one_line_error(_run(["demo", "--data", str(tmp_path / "missing")], tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in one_line_error(_run(["demo", "--data", str(empty)], tmp_path))
    bad_img = tmp_path / "imgs"
    (bad_img / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(bad_img / "a" / "ok.png")
    (bad_img / "a" / "broken.png").write_bytes(b"not an image")
    assert "broken.png" in one_line_error(_run(["demo", "--data", str(bad_img)], tmp_path))
    npz = tmp_path / "labels.npz"
    np.savez(npz, x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 2, 12]))
    assert "num_classes=10" in one_line_error(_run(["demo", "--data", str(npz)], tmp_path))
    assert "mat_dim=64" in one_line_error(_run(["demo", "--width", "64"], tmp_path))
    assert "--config and" in one_line_error(_run(["demo", "--config", "x.yaml", "--depth", "2"], tmp_path))
    assert "dtype" in one_line_error(_run(["demo", "--dtype", "int8", "--limit", "10"], tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(tmp_path):
    assert "cuda" in one_line_error(_run(["demo", "--device", "cuda"], tmp_path))


def test_a_config_file_with_a_scalar_token_grans_is_one_line(tmp_path):
    f = tmp_path / "deploy.yaml"
    f.write_text("num_tokens: 8\ntoken_grans: 5\n")
    r = CliRunner().invoke(main, ["measure", "demo", "--config", str(f), "--data", "digits", "--limit", "20"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "token_grans=5 is not allowed" in r.output


@pytest.mark.parametrize("budget", ["nan", "0", "-1"])
def test_a_timing_budget_must_be_a_positive_number(budget):
    r = CliRunner().invoke(main, ["measure", "demo", "--budget", budget])
    assert r.exit_code == 2 and "--budget" in r.output and "Traceback" not in r.output


def test_inspect_and_measure_print_the_same_macs_for_the_same_config(tmp_path):
    """One MAC source of truth: inspect's closed-form table and measure's figure agree exactly."""
    info = json.loads(CliRunner().invoke(main, ["inspect", "demo", "--json"]).output)
    for row in info["configs"][:3] + info["configs"][-1:]:
        flags = [
            f"--{flag}={row[knob]}"
            for flag, knob in (("tokens", "num_tokens"), ("width", "mat_dim"), ("depth", "depth"))
            if row[knob] is not None
        ]
        r = _run(["demo", "--limit", "20", "--json", *flags], tmp_path)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["macs"] == row["macs"], row["config"]
