"""`adasearch run` end to end on the demo: exact fronts, resumption, workers, bad input."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from adasearch import DeploymentConfig, load_model
from adasearch.cli import main
from adasearch.data.datasets import load_data
from adasearch.data.split import holdout_split
from adasearch.measure.closed_form_macs import plan_macs
from adasearch.model.adaperceiver import make_plan
from adasearch.search.front.beyond_noise import SESSIONS
from adasearch.search.trials import retimed_figures
from tests.helpers import DEMO_SPACE, one_line_error, write_run_spec

ROOT = Path(__file__).resolve().parents[1]
SPACE = DEMO_SPACE


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def complete_trials(out: Path) -> list:
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def distinct_networks(out: Path) -> int:
    """The trial budget counts distinct networks; repeats of a measured one are stored but do not count."""
    return len({t.user_attrs["key"] for t in complete_trials(out)})


def brute_force_front(space: dict) -> set:
    """Accuracy by direct forwards on the search part (the run keeps data.holdout = 0.5 of the images out of
    the search), expected MACs by the closed form per sample's exit depth."""
    model = load_model("demo")
    data, _ = holdout_split(load_data("digits", limit=100), 0.5, seed=0)
    n = len(data)
    points = []
    for values in itertools.product(*space.values()):
        config = DeploymentConfig(**dict(zip(space, values)))
        with torch.inference_mode():
            outs = [(model.run(x, config), y) for x, y in data.batches(50)]
        acc = sum((o.logits.argmax(-1) == y).sum().item() for o, y in outs) / n
        exits = torch.cat([o.exit_depth for o, _ in outs]).tolist()
        kw = config.to_dict()
        macs = sum(plan_macs(model.cfg, make_plan(model.cfg, **{**kw, "depth": e})) for e in exits) / n
        points.append((acc, macs / 1e9))
    front = {p for p in points if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points)}
    return {(round(a, 9), round(g, 10)) for a, g in front}


def test_exhaustive_front_equals_brute_force(tmp_path):
    r = invoke(write_run_spec(tmp_path))
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert f"next: adasearch report {out}" in r.output  # where to go from here
    pareto = json.loads((out / "pareto.json").read_text())["pareto"]
    ours = {(round(p["metrics"]["accuracy"], 9), round(p["metrics"]["gmacs"], 10)) for p in pareto}
    assert ours == brute_force_front(SPACE)
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["engine"] == "exhaustive" and run["trials"] == 36 - 6  # depth 1 ignores tau: 6 duplicates
    assert run["environment"]["torch"] == torch.__version__
    # where the time went: every phase of this run, each second once, and the summary's last note says so
    phases = {k: v for k, v in run["time_s"].items() if k != "total"}
    assert set(phases) == {"setup", "search", "re-timing", "racing", "held-out"}
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= run["time_s"]["total"] + 0.5
    seconds, rest = run["notes"][-1].removeprefix("time: ").split(" s in all (", 1)
    assert abs(int(seconds) - run["time_s"]["total"]) <= 1 and rest.startswith("setup ")  # the note rounds to 1 s
    for f in ["trials.csv", "pareto.csv", "study.db"]:
        assert (out / f).exists()
    deployments = sorted((out / "deployments").glob("*.yaml"))
    assert len(deployments) == len(pareto)
    for d in deployments:
        doc = yaml.safe_load(d.read_text())
        assert DeploymentConfig.load(d) == DeploymentConfig.from_dict(doc["config"])
        assert d.name.startswith(f"acc{doc['metrics']['accuracy']:.4f}")
        assert doc["metrics"]["latency_p50_ms"] > 0  # finalists are re-timed even without latency objectives


@pytest.mark.parametrize("constraints, every_trial", [({}, False), ({"memory_mb": {"max": 1e6}}, True)])
def test_peak_memory_is_traced_per_trial_only_when_the_search_uses_it(tmp_path, constraints, every_trial):
    space = {"num_tokens": [1, 4, 32], "depth": [1, 3, 6], "mat_dim": [8, 32]}
    objectives = ("accuracy", "latency_p50_ms")
    r = invoke(write_run_spec(tmp_path, space, objectives=objectives, constraints=constraints, engine="exhaustive"))
    assert r.exit_code == 0, r.output
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 18 and (trials["latency_p50_ms"] > 0).all()
    # without a use for it, only the re-timed candidates (a few of the 18) carry a memory figure
    assert trials["memory_mb"].notna().all() if every_trial else trials["memory_mb"].isna().any()
    final = retimed_figures(optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}"))
    for row in json.loads((tmp_path / "out" / "pareto.json").read_text())["pareto"]:
        # every config on the final front carries the longer re-timing, even one that joined the
        # front only because re-timed candidates came out slower
        assert str(row["trial"]) in final
        assert row["metrics"]["memory_mb"] > 0  # re-timed candidates always get it


def test_configs_that_join_the_front_after_re_timing_are_re_timed_too(tmp_path, monkeypatch):
    """Make every final re-timing 50x slower: the first candidates drop off the front and trials that
    were never candidates join it. Each of those must be re-timed before it is reported."""
    from adasearch.measure.evaluator import Evaluator

    interleaved, rounds = Evaluator.time_interleaved, []

    def slow_first_round(self, configs, budget_s, seed=0, stop=None):
        out = interleaved(self, configs, budget_s, seed=seed, stop=stop)
        rounds.append(len(configs))
        if len(rounds) == 1:  # the first candidates come out 50x slower than their brief timings
            for figures in out.values():
                for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms"):
                    figures[k] *= 50
                    figures[k + "_ci_low"] *= 50
                    figures[k + "_ci_high"] *= 50
                    figures["round_figures"][k] = [50 * t for t in figures["round_figures"][k]]
        return out

    monkeypatch.setattr(Evaluator, "time_interleaved", slow_first_round)
    # exhaustive: every network is a trial, most of them never candidates (engine: model proposes only those)
    r = invoke(write_run_spec(tmp_path, objectives=("accuracy", "latency_p50_ms"), engine="exhaustive"))
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    final = retimed_figures(optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}"))
    pareto = json.loads((out / "pareto.json").read_text())["pareto"]
    assert len(rounds) >= 2  # trials that joined the front were re-timed in a later round
    assert pareto and all(str(row["trial"]) in final for row in pareto)
    public = [
        {k: v for k, v in final[str(row["trial"])].items() if k != SESSIONS} for row in pareto
    ]  # rounds: study only
    assert all(row["metrics"] == {**row["metrics"], **figures} for row, figures in zip(pareto, public))


def test_every_trial_of_one_config_reports_the_same_figures(tmp_path):
    """Samplers repeat configs; the config is measured once and re-timed once, and each copy says so.
    Repeats do not count against the budget: the run ends when every network is measured."""
    small = {"num_tokens": [1, 32], "depth": [1, 6]}  # 4 networks, budget 12: repeats are certain
    r = invoke(
        write_run_spec(
            tmp_path,
            objectives=("accuracy", "latency_p50_ms"),
            space=small,
            engine="optuna",
            sampler="random",
            trials=12,
        )
    )
    assert r.exit_code == 0, r.output
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert trials["config"].nunique() == 4 and len(trials) > 4  # all 4 networks, and repeats recorded
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["networks"] == 4 and run["trials"] == len(trials)
    assert any("every one of the space's 4 networks" in n for n in run["notes"])
    metrics = ["accuracy", "latency_p50_ms", "latency_p90_ms"]
    assert (trials.groupby("config")[metrics].nunique() == 1).all().all()


def test_resuming_with_a_new_timing_constraint_times_what_was_never_timed(tmp_path):
    small = {"num_tokens": [1, 32], "depth": [1, 6]}
    assert invoke(write_run_spec(tmp_path, space=small)).exit_code == 0  # accuracy vs gmacs: nothing timed
    r = invoke(write_run_spec(tmp_path, space=small, constraints={"latency_p90_ms": {"max": 1e6}}))
    assert r.exit_code == 0, r.output
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    timed = trials[trials["latency_p90_ms"].notna()]
    assert set(timed["config"]) == set(trials["config"])  # every config got a timed trial
    # a stored trial without the constrained metric cannot be shown feasible
    assert not trials[trials["latency_p90_ms"].isna()]["feasible"].any()
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["feasible"] == len(timed)


def test_optuna_resumes_and_only_grows(tmp_path):
    spec = write_run_spec(tmp_path, engine="optuna", sampler="tpe", trials=8)
    assert invoke(spec).exit_code == 0
    first = {t.number: (t.params, t.values) for t in complete_trials(tmp_path / "out")}
    assert distinct_networks(tmp_path / "out") == 8
    r = invoke(spec, "--trials", 14)
    assert r.exit_code == 0, r.output
    second = {t.number: (t.params, t.values) for t in complete_trials(tmp_path / "out")}
    assert distinct_networks(tmp_path / "out") == 14 and all(second[n] == v for n, v in first.items())
    r = invoke(spec, "--trials", 14)  # nothing left to do: no extra trial, none counted as new
    assert r.exit_code == 0 and "(0 new" in r.output, r.output
    assert len(complete_trials(tmp_path / "out")) == len(second)


def test_resume_after_kill(tmp_path):
    spec = write_run_spec(tmp_path, engine="optuna", sampler="random", trials=24)
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--no-progress"]
    env = dict(os.environ)  # with this test's ADASEARCH_CACHE (conftest's isolated_cache)
    log = open(tmp_path / "first-run.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    db = tmp_path / "out" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.3)
        assert proc.poll() is None, (tmp_path / "first-run.log").read_text()[-2000:]  # died before the kill
        if db.exists():
            try:
                if distinct_networks(tmp_path / "out") >= 5:
                    break
            except Exception:  # the study is being created
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert db.exists(), (tmp_path / "first-run.log").read_text()[-2000:]
    before = {t.number: (t.params, t.values) for t in complete_trials(tmp_path / "out")}
    assert 5 <= distinct_networks(tmp_path / "out") < 24, (tmp_path / "first-run.log").read_text()[-2000:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {t.number: (t.params, t.values) for t in complete_trials(tmp_path / "out")}
    assert distinct_networks(tmp_path / "out") == 24 and all(after[n] == v for n, v in before.items())


def test_two_workers_share_one_storage(tmp_path):
    spec = write_run_spec(tmp_path, engine="optuna", sampler="random", trials=12, workers=2)
    r = invoke(spec)
    assert r.exit_code == 0, r.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # none lost, none duplicated
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # none left RUNNING
    # each worker stops once 12 distinct networks are stored; the other may finish the one in flight
    assert 12 <= len({t.user_attrs["key"] for t in trials}) <= 13


def test_a_storage_whose_schema_another_process_is_creating_is_retried(tmp_path, monkeypatch):
    """The loser of SQLAlchemy's create-if-missing race sees an IntegrityError (seen in CI when a
    reader opened study.db while the run was creating it); opening again must succeed."""
    from sqlalchemy.exc import IntegrityError

    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, url, **kwargs):
            calls.append(url)
            super().__init__(url, **kwargs)  # on the first call, the other process that wins the race
            if len(calls) == 1:
                raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    r = invoke(write_run_spec(tmp_path, engine="optuna", sampler="random", trials=3))
    assert r.exit_code == 0, r.output
    assert len(calls) == 2 and len(complete_trials(tmp_path / "out")) == 3


def test_no_feasible_config_shows_the_closest(tmp_path):
    r = invoke(write_run_spec(tmp_path, constraints={"accuracy": {"min": 0.9999}}))
    assert r.exit_code == 0
    assert "no config satisfies the constraints" in r.output and "accuracy by" in r.output


def test_resuming_with_other_objectives_is_refused_in_one_line(tmp_path):
    small = {"num_tokens": [1, 32], "depth": [1, 6]}
    assert invoke(write_run_spec(tmp_path, objectives=("accuracy", "gmacs"), space=small)).exit_code == 0
    # same directions (max, min), other metric: the stored values would be read as latency
    r = invoke(write_run_spec(tmp_path, objectives=("accuracy", "latency_p50_ms"), space=small))
    one_line_error(r, "for objectives ['accuracy', 'gmacs']", "asks for ['accuracy', 'latency_p50_ms']")


def test_bad_specs(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: demo\nsearch: [1, 2\n")
    one_line_error(invoke(f), "malformed YAML")
    f.write_text("model: demo\nhardwre: {device: cpu}\n")
    one_line_error(invoke(f), "unknown key 'hardwre'", "allowed here:", "hardware")
    f.write_text("model: demo\nsearch: {engin: optuna}\n")
    one_line_error(invoke(f), "unknown key 'search.engin'", "engine")
    f.write_text("objectives: [accuracy, latency_ms]\n")
    one_line_error(invoke(f), "unknown metric 'latency_ms'", "latency_p50_ms")
    f.write_text("constraints: {speed: {max: 3}}\n")
    one_line_error(invoke(f), "constraints.speed: unknown metric")
    f.write_text("search: {engine: grid}\n")
    one_line_error(invoke(f), "search.engine", "'grid' is not allowed")
    f.write_text(f"search: {{storage: 'sqlite:////nonexistent-dir/x/study.db'}}\noutput: {tmp_path / 'o'}\n")
    one_line_error(invoke(f), "search.storage: cannot open")
    spec = write_run_spec(tmp_path, space={"num_tokens": [1, 64]})
    one_line_error(invoke(spec), "knobs.num_tokens: value 64 does not fit the model")
    one_line_error(invoke(tmp_path / "missing.yaml"), "no such run spec file")
    for text, needles in [
        ("constraints: {accuracy: {min: .nan}}\n", ["constraints.accuracy.min"]),
        ("search: {seed: -1}\n", ["search.seed", "greater than or equal to 0"]),
        ("data: {source: digits, limit: true}\n", ["data.limit", "integer"]),
        ("objectives: [{accuracy: [1]}, gmacs]\n", ["objectives: accuracy: [1] is not a direction"]),
    ]:
        f.write_text(text)
        one_line_error(invoke(f), *needles)
    f.write_bytes(b"\xff\xfe model: demo\n")
    one_line_error(invoke(f), "cannot read it as UTF-8 text")
    one_line_error(invoke(spec, "--timeout", "-5"), "--timeout: search.timeout", "greater than 0")


def test_every_example_spec_is_valid():
    """The annotated examples in examples/ are documentation that must keep working."""
    from adasearch.spec import load_spec

    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        spec = load_spec(str(path))
        assert spec.output_dir.name == path.stem  # results/<example name>


def test_a_data_file_named_like_the_builtin_set_is_still_a_file_next_to_the_spec(tmp_path, monkeypatch):
    import numpy as np

    from adasearch.data.digits import digits

    x, y = digits("val")
    np.savez(tmp_path / "digits_small.npz", x=x[:40].numpy(), y=y[:40].numpy())
    spec = write_run_spec(tmp_path, space={"num_tokens": [1, 32]})
    doc = yaml.safe_load(spec.read_text())
    doc["data"] = "digits_small.npz"  # relative to the spec's folder
    spec.write_text(yaml.safe_dump(doc))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke(spec)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "out" / "trials.csv")) == 2
