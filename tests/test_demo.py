"""The shipped demo checkpoint and `adasearch inspect`."""

import json

import torch
from click.testing import CliRunner

from adasearch import load_model
from adasearch.cli import main
from adasearch.data.digits import digits
from adasearch.model.train_demo import accuracy_table, format_accuracy_table


def test_demo_accuracy_targets():
    model = load_model("demo")
    x, y = digits("val")
    t = accuracy_table(model, x, y)
    cfg = model.cfg
    full = t[(32, cfg.depth, 32)]
    smallest = t[(1, 1, 8)]
    assert full >= 0.95
    assert smallest <= full - 0.02  # clearly lower
    assert t[(1, cfg.depth, 32)] < t[(8, cfg.depth, 32)] <= t[(32, cfg.depth, 32)] + 0.005  # tokens buy accuracy
    assert t[(32, cfg.depth, 8)] < full  # width buys accuracy
    assert t[(32, 1, 32)] < full  # depth buys accuracy...
    by_depth = [sum(v for (_, d, _), v in t.items() if d == depth) for depth in range(1, cfg.depth + 1)]
    assert by_depth[0] < by_depth[cfg.depth // 2] < by_depth[-1]  # ...averaged over every tokens x width too
    # the README's table (from `adasearch train-demo`) prints those means
    means = ", ".join(f"{d}: {v * cfg.depth / len(t):.3f}" for d, v in enumerate(by_depth, 1))
    assert f"mean top-1 over every tokens x width, by depth: {means}" in format_accuracy_table(model)
    assert min(t.values()) > 0.85  # every trained config is usable


def test_demo_split_is_fixed_and_disjoint():
    xt, yt = digits("train")
    xv, yv = digits("val")
    assert len(yv) == 450 and len(yt) == 1347
    assert torch.equal(digits("val")[1], yv)
    train_rows = {tuple(r.flatten().tolist()) for r in xt}
    overlap = sum(tuple(r.flatten().tolist()) in train_rows for r in xv)
    assert overlap < 5  # digits has a few duplicate images; the split itself is disjoint by index


def test_inspect_json():
    result = CliRunner().invoke(main, ["inspect", "demo", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    model = load_model("demo")
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["trained_token_grans"] == [1, 2, 4, 8, 16, 32]
    macs = {r["config"]: r["macs"] for r in info["configs"]}
    assert macs["N32-wfull-dall"] > macs["N8-wfull-dall"] > macs["N1-w8-d1"]
    assert "multiply-add" in info["macs_convention"]


def test_inspect_table():
    result = CliRunner().invoke(main, ["inspect", "demo"])
    assert result.exit_code == 0 and "trained widths" in result.output and "MACs per image" in result.output
