"""The hostile-input battery's last failures (issue 18), one test per class: each failed before its fix.

Sizes are checked before work, non-finite numbers are refused, what adasearch writes it can read back,
one run at a time writes a folder, and messages say what happened.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adasearch.checks import ENUMERABLE_LIMIT, MAX_NAME, MAX_THREADS, MAX_TRIALS
from adasearch.cli import main
from adasearch.errors import UserError
from adasearch.measure.latency_model import LatencyModel
from adasearch.run_folder import LOCK, PARETO_JSON, RUN, TRIALS
from adasearch.search.space import SearchSpace
from tests.helpers import one_line_error, run_once, write_run_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_tokens": [1, 32], "depth": [1, 6]}  # 4 networks


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def run(spec, *flags):
    return invoke("run", spec, "--no-progress", *flags)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return run_once(tmp_path_factory.mktemp("finished"), TINY, limit=40)


# ---------------------------------------------------------------- an empty front


def test_report_on_an_empty_front_writes_a_report_that_says_so(tmp_path):
    spec = write_run_spec(tmp_path, TINY, limit=40, constraints={"accuracy": {"min": 1.5}})
    assert run(spec).exit_code == 0
    out = tmp_path / "out"
    assert json.loads((out / PARETO_JSON).read_text())["pareto"] == []
    r = invoke("report", out)
    assert r.exit_code == 0, r.output
    assert "No config satisfies the constraints" in (out / "report.md").read_text()
    assert "No config satisfies the constraints" in (out / "report.html").read_text()
    assert (out / "report_files" / "front.png").stat().st_size > 0  # the trials still plotted


# ---------------------------------------------------------------- sizes checked before work


def test_exhaustive_on_a_huge_space_is_refused_before_enumerating(tmp_path, monkeypatch):
    space = {"depth_tau": {"values": [None, 0.5, 0.9, 0.99], "granularity": "per_layer"},
             "mat_dim": {"values": [8, 16, 32], "granularity": "per_layer"}}  # fmt: skip
    spec = write_run_spec(tmp_path, space, limit=40, engine="exhaustive")

    def never(self):
        raise AssertionError("enumerated a space over the limit")

    monkeypatch.setattr(SearchSpace, "unique", never)
    monkeypatch.setattr(SearchSpace, "enumerate", never)
    line = one_line_error(run(spec), "exhaustive cannot search", f"{ENUMERABLE_LIMIT:,}", "engine: optuna")
    assert "spec.yaml" in line


@pytest.mark.parametrize(
    "section, key, value, needle",
    [
        ("hardware", "threads", 1_000_000, f"less than or equal to {MAX_THREADS}"),
        ("search", "trials", 10**12, f"less than or equal to {MAX_TRIALS}"),
        ("search", "exhaustive_limit", 10**20, f"less than or equal to {ENUMERABLE_LIMIT}"),
    ],
)
def test_sizes_past_their_limit_are_refused_at_the_spec_check(tmp_path, monkeypatch, section, key, value, needle):
    import adasearch.search.context as context

    monkeypatch.setattr(context, "prepare", lambda *a, **k: pytest.fail("work started"))
    spec = write_run_spec(tmp_path, TINY, limit=40)
    doc = yaml.safe_load(spec.read_text())
    doc.setdefault(section, {})[key] = value
    spec.write_text(yaml.safe_dump(doc))
    one_line_error(run(spec), f"{section}.{key}", needle)


@pytest.mark.parametrize("flag", [["--trials", str(10**12)], ["--threads", "1000000"]])
def test_size_flags_past_their_limit_are_refused(tmp_path, flag):
    command = ["run", str(write_run_spec(tmp_path, TINY))] if flag[0] == "--trials" else ["measure", "demo"]
    one_line_error(invoke(*command, *flag), flag[0])


# ---------------------------------------------------------------- the file system's limits


def test_an_output_name_over_the_file_systems_limit_is_one_line(tmp_path):
    spec = write_run_spec(tmp_path, TINY, limit=40)
    one_line_error(run(spec, "-o", tmp_path / ("x" * 300)), "cannot create the results folder", "too long")


# ---------------------------------------------------------------- what is written can be read


def test_a_spec_under_the_cap_cannot_make_a_run_yaml_over_it(tmp_path):
    spec = write_run_spec(tmp_path, TINY, limit=40)
    doc = yaml.safe_load(spec.read_text())
    for key in ("name", "model"):
        huge = {**doc, key: "x" * 1_000_000}  # just under the 1 MiB cap of a spec file
        spec.write_text(yaml.safe_dump(huge, width=10**7))
        assert spec.stat().st_size < 1 << 20
        line = one_line_error(run(spec), key, "at most")
        assert len(line) < 700
    doc["name"] = "n" * MAX_NAME  # the longest name allowed runs, and its files read back
    spec.write_text(yaml.safe_dump(doc))
    assert run(spec).exit_code == 0
    assert invoke("report", tmp_path / "out").exit_code == 0


# ---------------------------------------------------------------- non-finite numbers


def test_certify_refuses_nan_numbers(finished, tmp_path):
    from adasearch.certify import certify_run

    for flag in ("--confidence", "--accuracy-drop"):
        args = {"--confidence": "0.9", "--accuracy-drop": "0.1", flag: "nan"}
        one_line_error(invoke("certify", finished, "--data", "digits", *[x for kv in args.items() for x in kv]), flag)
    with pytest.raises(UserError, match="--confidence nan"):
        certify_run(str(finished), "digits", "accuracy_drop", 0.1, math.nan)
    assert "nan" not in (finished / PARETO_JSON).read_text().lower()


def test_export_refuses_to_pick_by_nan_figures(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    doc = json.loads((copy / PARETO_JSON).read_text())
    for row in doc["pareto"]:
        row["metrics"]["accuracy"] = math.nan
    (copy / PARETO_JSON).write_text(json.dumps(doc))
    one_line_error(invoke("export", copy, "--pick", "max accuracy"), "accuracy is nan, not a number")
    one_line_error(invoke("export", copy, "--pick", "min gmacs where accuracy >= 0.5"), "accuracy is nan")


def test_a_latency_model_with_absurd_figures_is_refused():
    model = LatencyModel({"t": 1, "batch_size": 4}, 4, {"embed_read:n8:b4": 10.0}, [[10.0, 1.0]], [[10.0, 1.0]], [1.0])
    doc = json.loads(json.dumps(model.to_dict()))
    assert LatencyModel.from_dict(doc).parts == model.parts
    absurd = {**doc, "parts": {k: v * 1e300 for k, v in doc["parts"].items()}}
    with pytest.raises(ValueError, match="over"):
        LatencyModel.from_dict(absurd)


# ---------------------------------------------------------------- two runs, one folder


def test_two_runs_on_one_folder_the_second_is_refused_while_the_first_runs(tmp_path):
    """Two real processes: the first holds the folder's lock for its life; the second, another spec into the
    same folder, is refused in one line and writes nothing; the first's results are its own."""
    big = {"num_tokens": [1, 2, 4, 8, 16, 32], "depth": [1, 2, 3, 4, 5, 6]}
    first = write_run_spec(tmp_path / "a", big, name="first", limit=40, engine="optuna", trials=20)
    second = write_run_spec(tmp_path / "b", TINY, name="second", limit=40)
    out = tmp_path / "shared"
    cli = [sys.executable, str(ROOT / "cli.py"), "run", "--no-progress", "-o", str(out)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([*cli, str(first)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / LOCK).is_file() and (out / LOCK).read_text().strip()):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.1)
        assert (out / LOCK).read_text().strip() == str(proc.pid)
        refused = subprocess.run([*cli, str(second)], capture_output=True, text=True, timeout=120)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert f"another adasearch run (pid {proc.pid})" in lines[0] and str(out) in lines[0]
        assert proc.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert yaml.safe_load((out / RUN).read_text())["spec"]["name"] == "first"
    assert "second" not in (out / TRIALS).read_text()
    # The lock died with its process: the next run is judged on the folder's contents (another run's results).
    one_line_error(run(second, "-o", out), "holds the results of run 'first'")


def test_a_run_killed_hard_leaves_the_folder_unlocked(tmp_path):
    from adasearch.run_folder import RunFolder

    code = "import sys, time; from adasearch.run_folder import RunFolder\n" \
           "with RunFolder(sys.argv[1]).locked():\n    print('locked', flush=True); time.sleep(60)\n"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="another adasearch run"):
            with RunFolder(tmp_path).locked():
                pass
    finally:
        proc.kill()
        proc.wait()
    with RunFolder(tmp_path).locked():  # kill -9: the kernel released it
        pass


# ---------------------------------------------------------------- messages that mislead


def test_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """Optuna wraps the database's error in "invalid data ... e.g. exceeding max length"; the line gives SQLite's."""
    import sqlite3

    import sqlalchemy.orm
    from sqlalchemy.exc import OperationalError

    from adasearch.search import context

    original, recorded = context.record_trial, {"n": 0}

    def disk_full_after_two(*args, **kwargs):
        recorded["n"] += 1
        if recorded["n"] > 2:

            def full(self):
                raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

            monkeypatch.setattr(sqlalchemy.orm.Session, "commit", full)
        return original(*args, **kwargs)

    monkeypatch.setattr("adasearch.search.runner.record_trial", disk_full_after_two)
    spec = write_run_spec(tmp_path, TINY, limit=40, engine="optuna", sampler="random", trials=4)
    line = one_line_error(run(spec), "cannot record a trial", "database or disk is full", "are kept")
    assert "max length" not in line


def test_a_results_folder_deleted_mid_run_does_not_claim_its_trials_are_kept(tmp_path, monkeypatch):
    from adasearch.search import context

    original, recorded = context.record_trial, {"n": 0}
    out = tmp_path / "out"

    def delete_after_two(*args, **kwargs):
        recorded["n"] += 1
        if recorded["n"] == 3:
            shutil.rmtree(out)
        return original(*args, **kwargs)

    monkeypatch.setattr("adasearch.search.runner.record_trial", delete_after_two)
    spec = write_run_spec(tmp_path, TINY, limit=40, engine="optuna", sampler="random", trials=4)
    line = one_line_error(run(spec), "cannot record a trial", "results folder was deleted", "lost")
    assert "are kept" not in line


def test_a_dtype_only_change_on_resume_names_only_the_dtype(tmp_path):
    spec = write_run_spec(tmp_path, TINY, limit=40)
    assert run(spec).exit_code == 0
    doc = yaml.safe_load(spec.read_text())
    doc["hardware"] = {"dtype": "bfloat16"}
    spec.write_text(yaml.safe_dump(doc))
    line = one_line_error(run(spec), "other dtype;")
    assert "weights" not in line
