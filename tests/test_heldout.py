"""Honest accuracy: the held-out split, held-out figures with intervals, certified configs, `certify`, and
serving by max_drop."""

import json
import re

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from adasearch import metrics
from adasearch.cli import main
from adasearch.data.datasets import TensorSource, load_data
from adasearch.data.split import holdout_split
from adasearch.errors import UserError
from adasearch.search.front.heldout import Outcome, certify, compare
from tests.helpers import write_run_spec

SPACE = {"num_tokens": [1, 4, 32], "depth": [1, 3, 6], "mat_dim": [8, 32], "depth_tau": [None, 0.9]}
CONTRACT = ["test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_samples", "accuracy_drop",
            "accuracy_drop_ci_low", "accuracy_drop_ci_high"]  # fmt: skip


def indices(part) -> set:
    """Which of the full set's samples a TensorSource part holds (the digits are distinct vectors)."""
    return {tuple(v.tolist()) for v in part.x.flatten(1)}


def test_the_split_is_deterministic_disjoint_and_stratified():
    data = load_data("digits")
    search, held = holdout_split(data, 0.5, seed=0)
    again_search, again_held = holdout_split(data, 0.5, seed=0)
    assert torch.equal(search.x, again_search.x) and torch.equal(held.y, again_held.y)
    assert not indices(search) & indices(held) and len(search) + len(held) == len(data)
    for cls in range(10):  # each class halves (a lone or odd image rounds towards the held-out part)
        n = int((data.y == cls).sum())
        assert int((held.y == cls).sum()) == (n + 1) // 2
    other_search, _ = holdout_split(data, 0.5, seed=1)
    assert not torch.equal(other_search.x, search.x)
    assert search.fingerprint() != held.fingerprint()  # the accuracy cache keys each part apart


def test_a_held_out_part_too_small_to_evaluate_is_one_line():
    with pytest.raises(UserError, match=re.escape("data.holdout: 0.95 is not allowed; a fraction in [0, 0.9]")):
        holdout_split(load_data("digits"), 0.95, seed=0)
    with pytest.raises(UserError, match=r"\(it gets 1\d images\); it needs at least 20 images and one per class"):
        holdout_split(load_data("digits", limit=100), 0.1, seed=0)
    y = torch.tensor([0] * 60 + [1] * 39 + [2])  # class 2 has one image: 0.4 of it rounds to none
    lonely = TensorSource("lonely", "lonely", torch.randn(100, 1, 8, 8), y)
    with pytest.raises(UserError, match="class 2 gets no image"):
        holdout_split(lonely, 0.4, seed=0)


def test_compare_against_hand_counts():
    full = Outcome(
        torch.tensor([1, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=torch.bool), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    )
    config = Outcome(
        torch.tensor([1, 0, 0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool), torch.tensor([0, 9, 9, 3, 4, 5, 6, 7, 8, 8])
    )
    got = compare(config, full)
    assert got["test_accuracy"] == 0.7 and got["test_samples"] == 10
    assert got["accuracy_drop"] == pytest.approx((2 - 1) / 10)  # b = 2 (right -> wrong), c = 1
    assert got["disagreement"] == pytest.approx(3 / 10)
    assert got["test_accuracy_ci_low"] <= 0.7 <= got["test_accuracy_ci_high"]
    assert got["accuracy_drop_ci_low"] <= 0.1 <= got["accuracy_drop_ci_high"]
    assert got["_loss"]["accuracy_drop"] == 0.2  # what is certified: right -> wrong, an upper bound on the drop


def test_pareto_testing_goes_from_the_most_expensive_and_stops_at_the_first_failure():
    n = 200
    figures = {k: {"test_samples": n, "_loss": {"disagreement": loss}} for k, loss in
               [("a", 0.0), ("b", 0.0), ("c", 0.2), ("d", 0.0)]}  # fmt: skip
    front = [("d", 1.0), ("b", 3.0), ("a", 4.0), ("c", 2.0)]  # (key, MACs): tested a, b, c, d
    got = certify(front, figures, "disagreement", delta=0.05, confidence=0.9)
    assert set(got) == {"a", "b"}  # c fails, so d is never tested although it would pass
    assert got["a"]["samples"] == n and got["a"]["p_value"] <= 0.1 and "Pareto Testing" in got["a"]["method"]


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heldout")
    spec = write_run_spec(tmp, SPACE, name="cert", limit=None, objectives=("accuracy", "gmacs"),
                          constraints={"accuracy_drop": {"max": 0.03, "confidence": 0.9}})  # fmt: skip
    doc = yaml.safe_load(spec.read_text())
    doc["data"] = {"source": "digits", "holdout": 0.5}  # all 450 digits: about half held out
    spec.write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(tmp / "cache"))
        r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    return tmp / "out", r.output


def test_the_run_writes_the_held_out_contract(certified_run):
    out, output = certified_run
    front = pd.read_csv(out / "pareto.csv")
    assert all(c in front.columns for c in CONTRACT)
    held = len(holdout_split(load_data("digits"), 0.5, seed=0)[1])
    assert (front["test_samples"] == held).all()
    assert ((front["test_accuracy_ci_low"] <= front["test_accuracy"])
            & (front["test_accuracy"] <= front["test_accuracy_ci_high"])).all()  # fmt: skip
    assert ((front["accuracy_drop_ci_low"] <= front["accuracy_drop"])
            & (front["accuracy_drop"] <= front["accuracy_drop_ci_high"])).all()  # fmt: skip
    for row in json.loads((out / "pareto.json").read_text())["pareto"]:
        assert all(c in row["metrics"] for c in CONTRACT)
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["holdout"]["samples"] == held and run["holdout"]["optimism"] == pytest.approx(
        (front["accuracy"] - front["test_accuracy"]).mean()
    )
    assert "optimism" in output and "certified: accuracy_drop <= 0.03" in " ".join(output.split())


def test_a_certified_config_carries_its_guarantee(certified_run):
    out, _ = certified_run
    docs = [yaml.safe_load(p.read_text()) for p in sorted((out / "deployments").glob("*.yaml"))]
    certified = [d for d in docs if "guarantee" in d]
    assert certified, "the demo must have something to certify"
    for d in certified:
        g = d["guarantee"]
        assert {"metric", "max", "confidence", "samples", "method"} <= set(g)
        assert g["metric"] == "accuracy_drop" and g["max"] == 0.03 and g["confidence"] == 0.9
        assert g["samples"] == len(holdout_split(load_data("digits"), 0.5, seed=0)[1])
        assert g["p_value"] <= 0.1
    # the most expensive front config is tested first: if anything is certified, it is
    most = max(docs, key=lambda d: d["metrics"]["macs"])
    assert "guarantee" in most


def test_certify_recertifies_the_front_on_new_data(certified_run, tmp_path):
    import shutil

    out, _ = certified_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    r = CliRunner().invoke(main, ["certify", str(copy), "--data", "digits:train", "--limit", "300",
                                  "--disagreement", "0.2", "--confidence", "0.8"])  # fmt: skip
    assert r.exit_code == 0, r.output
    pareto = json.loads((copy / "pareto.json").read_text())
    assert pareto["certification"]["data"].startswith("digits:train") and pareto["certification"]["samples"] == 300
    certified = [row for row in pareto["pareto"] if "guarantee" in row]
    assert certified and all(row["guarantee"]["metric"] == "disagreement" for row in certified)
    docs = [yaml.safe_load(p.read_text()) for p in (copy / "deployments").glob("*.yaml")]
    assert sum("guarantee" in d for d in docs) == len(certified)


@pytest.mark.parametrize("args, message", [
    (["--accuracy-drop", "0"], "0<x<1"),
    (["--disagreement", "0.1", "--confidence", "1"], "0<x<1"),
    (["--disagreement", "0.1", "--accuracy-drop", "0.1"], "give one of"),
])  # fmt: skip
def test_certify_bad_input_is_one_line(certified_run, args, message):
    out, _ = certified_run
    r = CliRunner().invoke(main, ["certify", str(out), "--data", "digits", *args])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and message in r.output, r.output


def test_certify_refuses_data_of_another_shape_or_class_count(certified_run, tmp_path):
    import numpy as np

    out, _ = certified_run
    f = tmp_path / "rgb.npz"
    np.savez(f, x=np.zeros((30, 3, 8, 8), np.float32), y=np.arange(30) % 10)
    r = CliRunner().invoke(main, ["certify", str(out), "--data", str(f), "--disagreement", "0.1"])
    assert r.exit_code == 2 and "rgb.npz" in r.output, r.output
    f = tmp_path / "many.npz"
    np.savez(f, x=np.zeros((30, 1, 8, 8), np.float32), y=np.arange(30) % 12)
    r = CliRunner().invoke(main, ["certify", str(out), "--data", str(f), "--disagreement", "0.1"])
    assert r.exit_code == 2 and "num_classes=10" in r.output, r.output


def test_serving_picks_the_cheapest_config_certified_for_max_drop(certified_run):
    from adasearch.serving import Deployment

    out, _ = certified_run
    dep = Deployment.load(out)
    x = load_data("digits", limit=4).x
    covered = [e for e in dep.configs if e.guarantee]
    p = dep.predict(x, max_drop=0.05)
    assert p.within_budget and p.guarantee is not None
    assert p.config == min(covered, key=lambda e: e.metrics["macs"]).config
    tight = dep.predict(x, max_drop=0.001)  # no guarantee that tight: the most accurate config, flagged
    assert not tight.within_budget and tight.guarantee is None or tight.guarantee["max"] > 0.001


def test_in_sample_runs_say_so(tmp_path):
    spec = write_run_spec(tmp_path, {"num_tokens": [1, 32], "depth": [1, 6]}, limit=40)
    doc = yaml.safe_load(spec.read_text())
    doc["data"]["holdout"] = 0
    spec.write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0 and "in-sample" in r.output, r.output
    assert "test_accuracy" not in pd.read_csv(tmp_path / "out" / "pareto.csv").columns


def test_metrics_of_the_held_out_kind_cannot_be_objectives():
    from adasearch.spec import RunSpec

    with pytest.raises(Exception, match="unknown metric 'test_accuracy'"):
        RunSpec(objectives=[metrics.TEST_ACCURACY, "gmacs"])
    with pytest.raises(Exception, match="constraints.disagreement: a certified constraint is"):
        RunSpec(constraints={metrics.DISAGREEMENT: {"max": 0.1}})  # held-out risks only as certified constraints


def test_http_max_drop_and_configs_show_guarantees(certified_run):
    from adasearch.serving import Deployment
    from adasearch.serving.http import create_app
    from tests.helpers import serving

    out, _ = certified_run
    dep = Deployment.load(out)
    x = load_data("digits", limit=2).x.tolist()
    with serving(create_app(dep)) as client:
        configs = client.get("/configs").json()
        assert any(c["guarantee"] for c in configs) and all("test_accuracy_ci_low" in c["metrics"] for c in configs)
        r = client.post("/predict", json={"inputs": x, "max_drop": 0.05})
        assert r.status_code == 200 and r.json()["guarantee"]["max"] <= 0.05, r.text
        for bad in (0, 1.5, "x", True):
            r = client.post("/predict", json={"inputs": x, "max_drop": bad})
            assert r.status_code == 422 and "max_drop" in r.json()["error"], r.text
        assert client.get("/healthz").status_code == 200
