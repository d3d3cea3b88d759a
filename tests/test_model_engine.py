"""engine: model (predict, then verify) on the demo's whole space: the contract columns, what it
proposes, the stored latency model and its reuse or refusal, resuming, another engine on its trials,
the fallback when the model is wrong, `adasearch profile`, and the refusals."""

import json
import re

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.metrics import P50, P90, P99, THROUGHPUT, interval_columns, predicted_column
from adasearch.search.engines.model import FALLBACK_ROUNDS, ROUNDS_ATTR, VERIFY_LIMIT
from adasearch.search.front.beyond_noise import SESSIONS
from adasearch.search.trials import retimed_figures
from tests.helpers import one_line_error, write_run_spec

TIMED = (P50, P90, P99, THROUGHPUT)
DEMO = {
    "num_tokens": [1, 2, 4, 8, 16, 32],
    "depth": [1, 2, 3, 4, 5, 6],
    "mat_dim": [8, 16, 32],
    "depth_tau": [None, 0.8, 0.9, 0.95, 0.99],
}  # fmt: skip: search_spaces/demo.yaml, 468 networks
NETWORKS = 468


def _run(spec, *flags):
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress", *flags])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the summary is wrapped to the terminal's width


def _trials(out):
    return optuna.load_study(study_name="m", storage=f"sqlite:///{out / 'study.db'}").get_trials()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(path))  # one accuracy cache for the module: the runs differ in timing
        yield path


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp("model")
    spec = write_run_spec(tmp, DEMO, name="m", objectives=["accuracy", P50], limit=120)
    return spec, tmp / "out", _run(spec)


def test_auto_picks_the_model_engine_and_pareto_csv_carries_the_contract(model_run):
    spec, out, output = model_run
    assert "engine: model" in (out / "run.yaml").read_text()
    front = pd.read_csv(out / "pareto.csv")
    for name in TIMED:  # measured at re-timing, predicted, and the 95 % interval, for every timed metric
        for column in (name, predicted_column(name), *interval_columns(name)):
            assert column in front and front[column].notna().all(), column
        assert (front[interval_columns(name)[0]] <= front[name]).all()
        assert (front[name] <= front[interval_columns(name)[1]]).all()
    assert set(front["timing"]) == {"re-timed"}
    # Every one of the 468 networks was predicted, but only those the prediction put in play were
    # proposed: at most the per-round limit, and more only in fallback rounds, which the notes name.
    trials = pd.read_csv(out / "trials.csv")
    assert 0 < len(trials) <= VERIFY_LIMIT * (1 + FALLBACK_ROUNDS) < NETWORKS
    assert set(trials["timing"]) <= {"predicted", "re-timed"}
    assert "latency model: profiled" in output and "re-timed finalists within" in output
    # exit configs whose timing images all stop before their cap are timing twins: one of each group is proposed
    twins = re.search(r"timing twins: (\d+) of 468 configs", output)
    assert twins and int(twins.group(1)) > 0, output
    doc = json.loads((out / "latency_model.json").read_text())
    assert doc["fingerprint"]["batch_size"] == 1 and doc["fingerprint"]["dtype"] == "float32"
    assert any(k.startswith("block:") for k in doc["parts"])
    assert len(doc["calibration"]["curve"]) == 5  # five static references along the MACs
    assert sum(r["exits"] for r in doc["references"]) == 3  # and three that exit: the points of the exit curve
    assert len(doc["calibration"]["exit_curve"]) == 3


def test_a_resume_adds_nothing_and_reuses_the_latency_model(model_run):
    spec, out, _ = model_run
    before = len(_trials(out))
    output = _run(spec)
    assert "latency model: reused" in output
    # Nothing is proposed again; only a fallback round, which a fresh re-timing can still call for
    # (at most FALLBACK_ROUNDS per study, resumes included), adds trials, and the summary says so.
    assert ("(0 new trials" in output and len(_trials(out)) == before) or "missed badly" in output


def test_another_engine_never_takes_predictions_for_measurements(model_run):
    spec, out, _ = model_run
    predicted = {t.user_attrs["key"] for t in _trials(out) if t.user_attrs["timing"] == "predicted"}
    assert predicted  # trials that were proposed but not re-timed carry predicted figures only
    _run(spec, "--engine", "exhaustive")
    timed = {t.user_attrs["key"] for t in _trials(out) if t.user_attrs["timing"] == "timed"}
    assert predicted <= timed  # each such network was timed by the exhaustive engine, not reused


def test_a_stored_model_is_rebuilt_with_a_reason_when_it_does_not_fit(tmp_path, cache):
    spec = write_run_spec(tmp_path, DEMO, name="m", objectives=["accuracy", P50], limit=120, trials=10)
    _run(spec)
    path = tmp_path / "out" / "latency_model.json"
    good = json.loads(path.read_text())
    doc = json.loads(json.dumps(good))
    doc["fingerprint"]["threads"] = 999
    path.write_text(json.dumps(doc))
    output = _run(spec, "--overwrite")
    assert "latency model: profiled" in output and "built for another target (threads 999 ->" in output
    assert json.loads(path.read_text())["fingerprint"]["threads"] != 999  # rebuilt and stored
    path.write_text("{not json")
    output = _run(spec, "--overwrite")
    assert "latency model: profiled" in output and "unreadable (JSONDecodeError)" in output
    doc = json.loads(path.read_text())
    del doc["parts"][next(k for k in doc["parts"] if k.startswith("block:"))]
    path.write_text(json.dumps(doc))
    assert "lacks 1 parts this space needs" in _run(spec, "--overwrite")
    doc = json.loads(path.read_text())
    doc["noise"] = [0.0]
    path.write_text(json.dumps(doc))
    assert "not a positive finite number" in _run(spec, "--overwrite")


def test_a_wrong_model_is_caught_by_the_re_timing_and_more_is_measured(tmp_path, cache):
    """A stored model of this very target whose blocks at full width are said to cost 40x too little (and
    the narrowest 5x too much):
    the re-timing disagrees, the summary says so, and the engine measures more instead of trusting it."""
    spec = write_run_spec(tmp_path, DEMO, name="m", objectives=["accuracy", P50], limit=120)
    _run(spec)
    path = tmp_path / "out" / "latency_model.json"
    doc = json.loads(path.read_text())
    for key in doc["parts"]:
        if key.startswith("block:"):  # full width 40x too cheap, the narrowest 5x too dear: no rescaling fixes that
            doc["parts"][key] *= 0.025 if ":h64:" in key else 5.0 if ":h16:" in key else 1.0
    assert any(":h64:" in k for k in doc["parts"])  # the demo's full FFN width (hidden 64)
    path.write_text(json.dumps(doc))
    output = _run(spec, "--overwrite")
    assert "latency model: reused" in output and "missed badly" in output
    more = [int(n) for n in re.findall(r"measuring (\d+) more configs that could be on the front", output)]
    assert more and all(n > 0 for n in more), output
    study = optuna.load_study(study_name="m", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert study.user_attrs[ROUNDS_ATTR] == len(more)  # counted in the study: a resume does not start again
    assert len(study.trials) >= sum(more) + 1
    # A fallback round re-times every config it added, and only those (with the front, whose records gain its
    # rounds): the candidates of the first re-timing keep its figures, from session 1 (a record's first session).
    final = retimed_figures(study)
    assert {str(t.number) for t in study.trials} <= set(final)
    firsts = [next(iter(entry[SESSIONS])) for entry in final.values()]
    assert "1" in firsts and len(set(firsts)) > 1, firsts  # re-timing every candidate again left no "1"


def test_profile_command_builds_then_reuses(model_run, tmp_path):
    spec, _, _ = model_run
    out = tmp_path / "profiled"
    result = CliRunner().invoke(main, ["profile", str(spec), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "slowest parts" in result.output and "latency model: profiled" in " ".join(result.output.split())
    assert (out / "latency_model.json").is_file()
    again = CliRunner().invoke(main, ["profile", str(spec), "--output", str(out), "--no-progress"])
    assert "latency model: reused" in " ".join(again.output.split())


def test_model_engine_where_it_cannot_run_is_one_line(tmp_path):
    # 3 latent tokens is not a trained block boundary of the demo: its accuracy needs a pass of its own.
    off = write_run_spec(tmp_path / "a", {"num_tokens": [3, 8], "depth": [2]}, objectives=["accuracy", P50],
                         engine="model")  # fmt: skip
    one_line_error(CliRunner().invoke(main, ["run", str(off), "--no-progress"]), "engine: model", "engine: optuna")
    untimed = write_run_spec(tmp_path / "b", {"num_tokens": [4, 8]}, objectives=["accuracy", "gmacs"], engine="model")
    one_line_error(CliRunner().invoke(main, ["run", str(untimed), "--no-progress"]), "times nothing")


def test_fallback_rounds_stop_once_a_rounds_proposals_all_stay_off_the_front(tmp_path, cache):
    """Every finalist 1.5x slower than predicted (a bad miss). After a fallback round whose one proposal came
    out off the front, the engine stops with a note; when that proposal reached the front, it proposes the
    next config the model puts in play (here the unmeasured one predicted fastest)."""
    from adasearch.search.context import prepare
    from adasearch.search.engines.model import ModelEngine
    from adasearch.search.trials import TrialRecord
    from adasearch.spec import load_spec

    space = {"num_tokens": [1, 2, 4, 8], "depth": [1, 2]}
    ctx = prepare(load_spec(write_run_spec(tmp_path, space, name="m", objectives=["accuracy", P50], limit=60)))
    configs = list(ctx.space.unique().items())[:4]
    low, high = interval_columns(P50)

    def record(i, accuracy, ms, measured=True):
        figures = {"accuracy": accuracy, predicted_column(P50): ms / 1.5 if measured else ms, P50: ms}
        if measured:
            figures.update({low: 0.99 * ms, high: 1.01 * ms})
        return TrialRecord(i, configs[i][0], configs[i][1], figures, True, {})

    finalists = [record(0, 0.97, 2.0), record(1, 0.95, 1.0), record(2, 0.90, 1.5)]  # 2 is off the front
    for proposed, goes_on in ((2, False), (1, True)):
        engine = ModelEngine(ctx)
        engine.predicted = [*finalists, record(3, 0.93, 0.9, measured=False)]
        engine.rounds, engine.proposed = 1, {configs[proposed][0]}
        assert engine.retimed(finalists) is goes_on
        if goes_on:
            assert [p.config for p in engine.todo] == [configs[3][0]]
        else:
            assert ctx.notes[-1] == (
                "latency model: the 1 configs measured in fallback round 1 all stayed off the front; no more rounds"
            )
