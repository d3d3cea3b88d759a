"""A run is one thing: nothing mixed, nothing overwritten, nothing parsed or stopped badly.

Resuming with other weights, data, space or dtype is refused; a hardware change re-times; a results
folder belongs to one run; YAML is bounded; Ctrl-C and SIGTERM at any point stop cleanly.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.search import runner
from adasearch.search.context import Measurer
from adasearch.search.engines.optuna import OptunaEngine
from adasearch.search.front.beyond_noise import SESSIONS
from adasearch.search.trials import retimed_figures
from tests.helpers import one_line_error, write_run_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_tokens": [1, 4, 32], "depth": [1, 6]}  # 6 networks


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def study_of(out: Path, name: str = "t"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def edit_spec(path: Path, **changes) -> Path:
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            doc.setdefault(section, {})[field] = value
        else:
            doc[section] = value
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------- fingerprints on resume


@pytest.mark.parametrize(
    "change, named",
    [
        ({"data": {"source": "digits", "limit": 50}}, "data"),
        ({"hardware": {"dtype": "bfloat16"}}, "dtype"),
    ],
)
def test_resuming_with_other_data_or_dtype_is_refused_and_mixes_nothing(tmp_path, change, named):
    spec = write_run_spec(tmp_path, SMALL, limit=40)
    assert invoke(spec).exit_code == 0
    before = (tmp_path / "out" / "trials.csv").read_text()
    one_line_error(invoke(edit_spec(spec, **change)), named, "--overwrite")
    assert (tmp_path / "out" / "trials.csv").read_text() == before  # nothing written


def test_resuming_with_another_space_or_other_weights_is_refused(tmp_path):
    from adasearch import load_model, save_model

    spec = write_run_spec(tmp_path, SMALL, limit=40)
    assert invoke(spec).exit_code == 0
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"knobs": {**SMALL, "depth": [1, 3, 6]}}))
    one_line_error(invoke(spec), "search space")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"knobs": SMALL}))
    model = load_model("demo")
    next(model.parameters()).data.mul_(1.01)  # same shapes, other weights
    save_model(model, tmp_path / "tweaked")
    one_line_error(invoke(edit_spec(spec, model=str(tmp_path / "tweaked"))), "model weights")


def test_a_hardware_change_re_times_and_reuses_no_timing(tmp_path):
    # exhaustive: every network is a trial in both runs (engine: model trials only what it verifies, which timing moves)
    spec = write_run_spec(
        tmp_path, SMALL, limit=40, objectives=("accuracy", "latency_p50_ms"), hardware={"threads": 1},
        engine="exhaustive",
    )  # fmt: skip
    assert invoke(spec).exit_code == 0
    first = study_of(tmp_path / "out").get_trials()
    r = invoke(edit_spec(spec, hardware={"threads": 2}))
    assert r.exit_code == 0, r.output
    assert "hardware changed" in r.output and "threads 1 -> 2" in " ".join(r.output.split())
    study = study_of(tmp_path / "out")
    now = study.user_attrs["fingerprint"]["hardware"]
    retimed = [t for t in study.trials if t.user_attrs["hardware"] == now]
    assert len(retimed) == len(first) and len(study.trials) == 2 * len(first)  # every network timed again
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["environment"]["threads"] == 2 and run["new_trials"] == len(first)
    # the figures reported are this hardware's: brief timings of the new trials, re-timings taken now
    brief = {t.user_attrs["key"]: t.user_attrs["metrics"] for t in retimed}
    final = list(retimed_figures(study).values())
    for row in yaml.safe_load((tmp_path / "out" / "pareto.json").read_text())["pareto"]:
        # the stored per-round timings (SESSIONS) stay in the study; every reported figure is a re-timed one
        assert any(all(row["metrics"][k] == v for k, v in f.items() if k != SESSIONS) for f in final)
    assert all(m["latency_p50_ms"] > 0 for m in brief.values())


# ---------------------------------------------------------------- a results folder belongs to one run


def test_another_run_into_the_same_folder_is_refused_unless_overwrite(tmp_path):
    spec = write_run_spec(tmp_path, SMALL, limit=40)
    assert invoke(spec).exit_code == 0
    before = (tmp_path / "out" / "pareto.json").read_text()
    other = edit_spec(Path(spec), name="other")
    one_line_error(invoke(other), "holds the results of run 't', not 'other'", "--overwrite")
    assert (tmp_path / "out" / "pareto.json").read_text() == before
    r = invoke(other, "--overwrite")
    assert r.exit_code == 0, r.output
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["spec"]["name"] == "other" and run["new_trials"] == run["trials"]
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'out' / 'study.db'}")] == [
        "other"
    ]


def test_an_emptied_storage_next_to_results_is_refused(tmp_path):
    spec = write_run_spec(tmp_path, SMALL, limit=40)
    assert invoke(spec).exit_code == 0
    before = (tmp_path / "out" / "trials.csv").read_text()
    (tmp_path / "out" / "study.db").write_bytes(b"")  # 0 bytes: SQLite would start a fresh study
    one_line_error(invoke(spec), "has no trials of this run", "--overwrite")
    assert (tmp_path / "out" / "trials.csv").read_text() == before
    assert invoke(spec, "--overwrite").exit_code == 0


def test_an_empty_spec_file_is_an_error(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing here\n")
    one_line_error(invoke(f), "empty.yaml", "the run spec is empty")


# ---------------------------------------------------------------- bounded YAML


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def test_yaml_aliases_are_refused_in_specs_spaces_and_deployment_files(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    one_line_error(invoke(f), "bomb.yaml", "alias *a is not allowed")
    spec = write_run_spec(tmp_path, SMALL, limit=40)
    (tmp_path / "space.yaml").write_text("knobs:\n  num_tokens: &t [1, 2]\n  depth: *t\n")
    one_line_error(invoke(spec), "space.yaml", "alias *t is not allowed")
    deployment = tmp_path / "deploy.yaml"
    deployment.write_text(BOMB)
    r = CliRunner().invoke(main, ["measure", "demo", "--config", str(deployment), "--limit", "10"])
    one_line_error(r, "deploy.yaml", "alias")


def test_huge_yaml_files_are_refused_before_they_are_read(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_text("model: demo\n" + "# padding\n" * 200_000)  # 2 MB
    one_line_error(invoke(f), "huge.yaml", "too large", "at most 1,048,576")


def test_error_lines_are_capped(tmp_path):
    f = tmp_path / "long.yaml"
    f.write_text(f"objectives: [accuracy, {'x' * 20_000}]\n")
    line = one_line_error(invoke(f), "unknown metric")
    assert len(line) <= 620


# ---------------------------------------------------------------- Ctrl-C anywhere, storage failures


def interrupt_after(calls: int):
    """A replacement that lets `calls` calls through, then raises KeyboardInterrupt."""

    def wrap(original):
        count = {"n": 0}

        def wrapper(*args, **kwargs):
            count["n"] += 1
            if count["n"] > calls:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        return wrapper

    return wrap


@pytest.mark.parametrize(
    "where",
    ["ask", "measure", "record", "tell", "choose_engine", "retime"],
)
def test_ctrl_c_at_every_point_of_the_loop_stops_cleanly(tmp_path, monkeypatch, where):
    targets = {
        "ask": (OptunaEngine, "ask", 3),
        "measure": (Measurer, "measure", 3),
        "record": (runner, "record_trial", 3),
        "tell": (OptunaEngine, "tell", 3),
        "choose_engine": (runner, "choose_engine", 0),
        "retime": (runner, "retime_finalists", 0),
    }
    owner, name, calls = targets[where]
    monkeypatch.setattr(owner, name, interrupt_after(calls)(getattr(owner, name)))
    spec = write_run_spec(tmp_path, SMALL, limit=40, engine="optuna", sampler="random", trials=6)
    r = invoke(spec)
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and "stopped by SIGINT" in r.output and "resume" in r.output
    out = tmp_path / "out"
    states = {t.state for t in study_of(out).get_trials()}
    assert optuna.trial.TrialState.RUNNING not in states  # the trial in flight was dropped, not left
    assert (out / "trials.csv").is_file() and (out / "pareto.json").is_file()
    monkeypatch.undo()
    assert invoke(spec).exit_code == 0  # and the same command resumes


def test_a_storage_that_fails_mid_run_is_one_line_and_keeps_what_was_stored(tmp_path, monkeypatch):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    original = optuna.storages.RDBStorage.set_trial_user_attr
    calls = {"n": 0}

    def read_only_after_a_while(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 15:  # 5 user attrs per trial: 3 trials get through
            raise OperationalError(
                "UPDATE trial_user_attributes", {}, sqlite3.OperationalError("attempt to write a readonly database")
            )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", read_only_after_a_while)
    spec = write_run_spec(tmp_path, SMALL, limit=40, engine="optuna", sampler="random", trials=6)
    one_line_error(invoke(spec), "cannot record a trial", "readonly database", "run the same command again to resume")
    monkeypatch.undo()
    assert len(study_of(tmp_path / "out").get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


# ---------------------------------------------------------------- real signals


@pytest.mark.parametrize(
    "sig, code, workers", [(signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 2)]
)
def test_a_signal_mid_run_stops_like_ctrl_c(tmp_path, sig, code, workers):
    space = {"num_tokens": [1, 2, 4, 8, 16, 32], "depth": [1, 2, 3, 4, 5, 6], "mat_dim": [8, 16, 32]}
    spec = write_run_spec(
        tmp_path,
        space,
        limit=40,
        engine="optuna",
        sampler="random",
        trials=100,
        workers=workers,
        objectives=("accuracy", "latency_p50_ms"),
        # Long enough that the run cannot finish between the third trial and the signal: at 0.2 s a run on a
        # fast machine once finished first (exit 0) while the study was being read.
        latency_budget_s=0.6,
    )
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--no-progress"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
        # As a terminal's Ctrl-C finds it: a shell without job control starts background jobs with SIGINT
        # ignored, their children inherit that, and this test run from such a job saw the run finish (exit 0).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    db = tmp_path / "out" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.3)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        try:
            if (
                db.exists()
                and len(study_of(tmp_path / "out").get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 3
            ):
                break
        except Exception:  # the study is being created
            pass
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code, (tmp_path / "run.log").read_text()[-2000:]
    log.close()
    text = (tmp_path / "run.log").read_text()
    assert "Traceback" not in text and f"stopped by {signal.Signals(sig).name}" in text and "resume" in text, text
    trials = study_of(tmp_path / "out").get_trials()
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in trials}
    assert (tmp_path / "out" / "trials.csv").read_text().count("\n") >= 3


# ---------------------------------------------------------------- small items: every message names file and key


@pytest.mark.parametrize(
    "text, needles",
    [
        ("hardware: {device: tpu}\n", ["hardware.device", "'tpu' is not known", "cuda:N"]),
        ("objectives: [{metric: accuracy, direction: up}, gmacs]\n", ["objectives.0.direction", "max, min"]),
        ("base_dir: /tmp\n", ["unknown key 'base_dir'", "allowed here: name, model"]),
    ],
)
def test_small_spec_mistakes_name_the_file_and_key(tmp_path, text, needles):
    f = tmp_path / "spec.yaml"
    f.write_text(text)
    one_line_error(invoke(f), str(f), *needles)


def test_max_and_min_shorthands_work_in_the_long_form_too(tmp_path):
    from adasearch.spec import load_spec

    f = tmp_path / "spec.yaml"
    f.write_text("objectives: [{metric: accuracy, direction: max}, {metric: gmacs, direction: min}]\n")
    assert [o.direction for o in load_spec(f).objectives] == ["maximize", "minimize"]


def test_inputs_whose_logits_overflow_are_refused_naming_the_data(tmp_path):
    import numpy as np

    from adasearch.data.digits import digits

    x, y = digits("val")
    f = tmp_path / "loud.npz"
    np.savez(f, x=np.full((20, *x.shape[1:]), 1e30, dtype=np.float32), y=y[:20].numpy())
    r = CliRunner().invoke(main, ["measure", "demo", "--data", str(f), "--budget", "0.01"])
    one_line_error(r, str(f), "logits are not finite")
