"""engine: model (predict, then verify) on the demo: the contract columns, the stored latency model and
its reuse or refusal, `adasearch profile`, and the one-line refusal of a space it cannot enumerate."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.metrics import P50, P90, P99, THROUGHPUT, interval_columns, predicted_column
from adasearch.search.model_engine import VERIFY_LIMIT
from tests.helpers import DEMO_SPACE, one_line_error, write_run_spec

TIMED = (P50, P90, P99, THROUGHPUT)


def _run(spec, *flags):
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress", *flags])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the summary is wrapped to the terminal's width


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    spec = write_run_spec(tmp, DEMO_SPACE, name="m", objectives=["accuracy", P50], limit=120)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(tmp / "cache"))
        output = _run(spec)
        yield spec, tmp / "out", output, mp


def test_auto_picks_the_model_engine_and_pareto_csv_carries_the_contract(model_run):
    spec, out, output, _ = model_run
    run = (out / "run.yaml").read_text()
    assert "engine: model" in run
    front = pd.read_csv(out / "pareto.csv")
    for name in TIMED:  # measured at re-timing, predicted, and the 95 % interval, for every timed metric
        for column in (name, predicted_column(name), *interval_columns(name)):
            assert column in front and front[column].notna().all(), column
        assert (front[interval_columns(name)[0]] <= front[name]).all()
        assert (front[name] <= front[interval_columns(name)[1]]).all()
    trials = pd.read_csv(out / "trials.csv")
    # Only what the prediction put in play was proposed, not the space's 30 networks... or all of them
    # when the space is that small: never more than the verify limit per round.
    assert 0 < len(trials) <= min(30, VERIFY_LIMIT * 4)
    assert "latency model: profiled" in output and "re-timed finalists within" in output
    doc = json.loads((out / "latency_model.json").read_text())
    assert doc["fingerprint"]["batch_size"] == 1 and doc["fingerprint"]["dtype"] == "float32"
    assert any(k.startswith("block:") for k in doc["parts"])
    assert doc["calibration"]["curve"] and doc["calibration"]["exit_factor"] > 0


def test_a_stored_model_is_reused_on_the_same_target_and_rebuilt_with_a_reason_otherwise(model_run):
    spec, out, _, _ = model_run
    path = out / "latency_model.json"
    assert "latency model: reused" in _run(spec, "--overwrite")
    doc = json.loads(path.read_text())
    doc["fingerprint"]["threads"] = 999
    path.write_text(json.dumps(doc))
    output = _run(spec, "--overwrite")
    assert "latency model: profiled" in output and "built for another target (threads 999 ->" in output
    assert json.loads(path.read_text())["fingerprint"]["threads"] != 999  # rebuilt and stored
    path.write_text("{not json")
    output = _run(spec, "--overwrite")
    assert "latency model: profiled" in output and "unreadable" in output
    doc = json.loads(path.read_text())
    del doc["parts"][next(k for k in doc["parts"] if k.startswith("block:"))]
    path.write_text(json.dumps(doc))
    assert "lacks 1 parts this space needs" in _run(spec, "--overwrite")


def test_profile_command_builds_then_reuses(model_run, tmp_path):
    spec, _, _, _ = model_run
    out = tmp_path / "profiled"
    result = CliRunner().invoke(main, ["profile", str(spec), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "slowest parts" in result.output and "latency model: profiled" in " ".join(result.output.split())
    assert (out / "latency_model.json").is_file()
    again = CliRunner().invoke(main, ["profile", str(spec), "--output", str(out), "--no-progress"])
    assert "latency model: reused" in " ".join(again.output.split())


def test_model_engine_on_a_space_it_cannot_enumerate_is_one_line(tmp_path):
    # 3 latent tokens is not a trained block boundary of the demo: its accuracy needs a pass of its own.
    spec = write_run_spec(tmp_path, {"num_tokens": [3, 8], "depth": [2]}, objectives=["accuracy", P50], engine="model")
    one_line_error(CliRunner().invoke(main, ["run", str(spec), "--no-progress"]), "engine: model", "engine: optuna")
