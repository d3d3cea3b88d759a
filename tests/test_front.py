"""The front beyond noise (search/front/beyond_noise.py: Judge, noise_front, equivalents, close_calls) on hand-made
records whose per-round timings make every paired comparison exact."""

import itertools

import pytest

from adasearch.config import DeploymentConfig
from adasearch.search.front.beyond_noise import SESSIONS, Judge, close_calls, equivalents, front_of
from adasearch.search.front.pareto import pareto_front
from adasearch.search.trials import TrialRecord, config_key, retimed_figures
from adasearch.spec import RunSpec

SPEC = RunSpec(objectives=["accuracy", "latency_p50_ms"])
DRIFT = [1.0, 1.3, 0.9, 2.5, 1.1, 1.0, 1.6, 0.95]  # the machine's speed in each of 8 rounds


def rec(n, acc, ms, macs=100.0, session="1", rounds=True):
    """Trial n (config depth n + 1 ... a distinct config per n) at `ms` ms in every round of `session`,
    times that round's machine speed; its point figure and interval as the re-timing would give."""
    per_round = [ms * d for d in DRIFT]
    metrics = {"accuracy": acc, "latency_p50_ms": ms * 1.1, "macs": macs,
               "latency_p50_ms_ci_low": ms * 0.95, "latency_p50_ms_ci_high": ms * 1.6}  # fmt: skip
    if rounds:
        metrics[SESSIONS] = {session: {"latency_p50_ms": per_round}}
    config = DeploymentConfig(num_tokens=n + 1)
    return TrialRecord(n, config, {}, metrics, True, {})


def numbers(recs):
    return sorted(r.number for r in recs)


def test_dominance_counts_timed_objectives_only_beyond_noise():
    judge = Judge(SPEC)
    fast = rec(0, 0.95, 1.00)
    tied_more_accurate = rec(1, 0.96, 1.02)  # 2 % slower in every round: within the 3 % threshold
    slower_more_accurate = rec(2, 0.96, 1.10)  # 10 % slower: separated
    tied_same_accuracy = rec(3, 0.95, 0.99)
    separated_same_accuracy = rec(4, 0.95, 1.20)
    assert judge.dominates(tied_more_accurate, fast)  # as fast within noise, and more accurate
    assert not judge.dominates(slower_more_accurate, fast) and not judge.dominates(fast, slower_more_accurate)
    assert not judge.dominates(tied_same_accuracy, fast) and not judge.dominates(fast, tied_same_accuracy)
    assert judge.dominates(fast, separated_same_accuracy)  # equal accuracy, faster beyond noise
    assert judge.tied(fast, tied_more_accurate) and not judge.tied(fast, slower_more_accurate)


def test_a_chain_of_ties_keeps_both_ends_whatever_the_order_of_records():
    """A ~ B (1.5 %), B ~ C (2.6 %), A and C separated (4.2 %). Built from the most accurate: A joins, B is
    dominated by A (more accurate, as fast within noise), C is not dominated by A (separated faster) and
    B is off the front, so C joins. The point rule keeps all three; dominance by any record would
    keep only A."""
    a, b, c = rec(0, 0.97, 1.000), rec(1, 0.96, 0.985), rec(2, 0.95, 0.960)
    judge = Judge(SPEC)
    assert judge.tied(a, b) and judge.tied(b, c) and not judge.tied(a, c)
    assert judge.dominates(b, c)  # C is dominated, but only by B, which is off the front
    for order in itertools.permutations([a, b, c]):
        assert [r.number for r in front_of(list(order), SPEC)] == [0, 2]
    assert equivalents(front_of([a, b, c], SPEC), [a, b, c], SPEC) == {
        config_key(a.config): [b.config.label()],  # as fast as A within noise, and no better anywhere
        config_key(c.config): [],  # B is as fast as C within noise, but more accurate: not an alternative to C
    }
    # B is off the front only through a tie with A, but a tie settled within 3 % (1.5 % in every round):
    # more rounds would not separate them, so it is no close call
    assert Judge(SPEC).settled(a, b) and close_calls([c, b, a], SPEC) == []


def test_a_race_spends_rounds_only_on_ties_more_rounds_could_break():
    """b is 2 % faster than a in every round: their interval lies within the 3 % threshold, settled. c is
    2 % faster in the median, but its rounds scatter by 8 % either way: the interval straddles 3 %, and
    more rounds could put c beyond it, on the front. Only (a, c) is a close call; hand-computed: c's
    log-ratios to a are log(0.98) + log(1.08) or - log(1.08) (4 rounds each), so every bootstrap median
    lies between 0.98 / 1.08 and 0.98 x 1.08, and the interval spans (0.907, 1.058), past 1.03."""
    a, b, c = rec(0, 0.97, 1.0), rec(1, 0.96, 0.98), rec(2, 0.96, 0.98)
    c.metrics[SESSIONS]["1"]["latency_p50_ms"] = [
        t * (1.08 if i % 2 else 1 / 1.08) for i, t in enumerate(c.metrics[SESSIONS]["1"]["latency_p50_ms"])
    ]
    judge = Judge(SPEC)
    settled = judge.paired_comparison(b, a, "latency_p50_ms")
    straddling = judge.paired_comparison(c, a, "latency_p50_ms")
    assert settled.low == settled.high == pytest.approx(0.98)
    assert (straddling.low, straddling.high) == (pytest.approx(0.98 / 1.08), pytest.approx(0.98 * 1.08))
    assert judge.tied(a, b) and judge.settled(a, b) and judge.tied(a, c) and not judge.settled(a, c)
    assert numbers(front_of([a, b, c], SPEC)) == [0]  # a dominates both: as fast within noise, more accurate
    assert close_calls([a, b, c], SPEC) == [(a, c)]


def test_a_race_among_some_configs_takes_only_their_close_calls():
    """A fallback round races only the pairs with a config it added (race's `among`): the close call (a, c)
    of the test above is raced when c is among them, and not when only b (in no close call) is."""
    from adasearch.search.front.beyond_noise import race

    def straddling():
        a, b, c = rec(0, 0.97, 1.0), rec(1, 0.96, 0.98), rec(2, 0.96, 0.98)
        rounds = c.metrics[SESSIONS]["1"]["latency_p50_ms"]
        c.metrics[SESSIONS]["1"]["latency_p50_ms"] = [t * (1.08 if i % 2 else 1 / 1.08) for i, t in enumerate(rounds)]
        return a, b, c

    for among, expected in (({"b"}, []), ({"c"}, [["a", "c"]]), (None, [["a", "c"]])):
        recs = straddling()
        names = {r.config: n for r, n in zip(recs, "abc")}
        keys = {n: config_key(r.config) for r, n in zip(recs, "abc")}
        timed = []

        def time_configs(configs, timed=timed, names=names):
            timed.append([names[c] for c in configs])
            return None  # the budget is spent: one look at what would be raced

        race(recs, SPEC, time_configs, 3, None if among is None else {keys[n] for n in among})
        assert timed == expected, among


def test_a_long_chain_never_collapses():
    """Ten configs, each 2 % faster and 0.005 less accurate than the one before: every neighbour is
    within noise. The front keeps every second one (4 % apart, separated); the point rule keeps all ten."""
    chain = [rec(i, 0.99 - 0.005 * i, 0.98**i) for i in range(10)]
    for order in (chain, chain[::-1], chain[3:] + chain[:3]):
        assert numbers(front_of(order, SPEC)) == [0, 2, 4, 6, 8]
    points = [(r.metrics["accuracy"], r.metrics["latency_p50_ms"]) for r in chain]
    assert len(pareto_front(points, ["maximize", "minimize"])) == 10


def test_equal_accuracy_within_noise_is_one_point_the_fewest_macs_stand_for_it_the_other_is_its_alternative():
    a, b = rec(0, 0.95, 1.00, macs=300), rec(1, 0.95, 1.01, macs=200)
    assert not Judge(SPEC).dominates(a, b) and not Judge(SPEC).dominates(b, a)  # neither beats the other
    for order in ([a, b], [b, a]):
        front = front_of(order, SPEC)
        assert numbers(front) == [1]  # b: fewer MACs, though its point figure is 1 % slower
        assert equivalents(front, order, SPEC) == {config_key(b.config): [a.config.label()]}


def test_a_chain_of_equal_accuracy_ties_is_one_point_whatever_the_order_of_records():
    """A ~ B (2 %), B ~ C (2.5 %), A and C separated (4.5 %), all of one accuracy. A dominates C (as accurate,
    faster beyond noise); A and B are one point, and B, with the fewest MACs, stands for it; A and C (tied
    with B) are its alternatives. A 5 % slower config of that accuracy, D, is dominated by A and B alike."""
    a, b, c = rec(0, 0.95, 1.000, macs=300), rec(1, 0.95, 1.020, macs=100), rec(2, 0.95, 1.045, macs=200)
    d = rec(3, 0.95, 1.071, macs=50)
    judge = Judge(SPEC)
    assert judge.tied(a, b) and judge.tied(b, c) and judge.dominates(a, c) and not judge.tied(a, c)
    assert judge.dominates(b, d) and judge.dominates(a, d)
    for order in itertools.permutations([a, b, c, d]):
        front = front_of(list(order), SPEC)
        assert numbers(front) == [1]
        assert equivalents(front, list(order), SPEC) == {config_key(b.config): [a.config.label(), c.config.label()]}


def test_more_rounds_can_separate_what_eight_could_not():
    """b is 5 % faster and less accurate; noisy rounds leave it tied with a on the first session's 8
    rounds (so a dominates it), and separated once a race session's rounds (5 % again) pool with them;
    the race's own machine speed cancels within it."""
    a, b = rec(0, 0.96, 1.0), rec(1, 0.95, 1.0)
    noise = [0.95, 1.03, 0.88, 0.95, 1.01, 0.95, 0.90, 1.02]
    b.metrics[SESSIONS]["1"]["latency_p50_ms"] = [t * n for t, n in zip(DRIFT, noise)]
    assert Judge(SPEC).tied(a, b) and numbers(front_of([a, b], SPEC)) == [0]
    race = [3.0 * d for d in DRIFT]  # a slower moment of the machine
    a.metrics[SESSIONS]["2"] = {"latency_p50_ms": race}
    b.metrics[SESSIONS]["2"] = {"latency_p50_ms": [0.95 * t for t in race]}
    assert not Judge(SPEC).tied(a, b) and numbers(front_of([a, b], SPEC)) == [0, 1]


def test_without_shared_rounds_intervals_then_points_decide():
    """Timed in different sessions: separated only when the intervals are disjoint (and beyond 3 %);
    never re-timed (brief timings): the figures themselves, as the point rule."""
    judge = Judge(SPEC)
    a, overlapping = rec(0, 0.96, 1.0, session="1"), rec(1, 0.95, 0.9, session="2")
    disjoint = rec(2, 0.95, 0.5, session="2")
    assert judge.tied(a, overlapping) and not judge.tied(a, disjoint)
    brief_a, brief_b = rec(3, 0.96, 1.0, rounds=False), rec(4, 0.95, 0.99, rounds=False)
    for r in (brief_a, brief_b):
        del r.metrics["latency_p50_ms_ci_low"], r.metrics["latency_p50_ms_ci_high"]
    assert numbers(front_of([brief_a, brief_b], SPEC)) == [3, 4]


def test_configs_only_the_intervals_of_different_sessions_separate_are_close_calls():
    """The machine's speed moves between sessions, so a's and b's disjoint intervals from sessions 1 and 2
    (1.25x apart) are raced together; c, 3.3x faster than a, is not. Once a race gives a and b common
    rounds in which they are alike, the paired test decides: a, as fast and more accurate, dominates b."""
    a, b, c = rec(0, 0.96, 1.0, session="1"), rec(1, 0.95, 0.8, session="2"), rec(2, 0.90, 0.3, session="2")
    for r, low, high in ((a, 0.95, 1.2), (b, 0.78, 0.9), (c, 0.28, 0.34)):
        r.metrics["latency_p50_ms"] = (low + high) / 2
        r.metrics["latency_p50_ms_ci_low"], r.metrics["latency_p50_ms_ci_high"] = low, high
    judge = Judge(SPEC)
    assert judge.unpaired(a, b) and not judge.unpaired(a, c) and not judge.unpaired(b, c)
    assert numbers(front_of([a, b, c], SPEC)) == [0, 1, 2]  # the intervals say b is faster than a
    assert close_calls([a, b, c], SPEC) == [(a, b)]
    for r in (a, b):
        r.metrics[SESSIONS]["3"] = {"latency_p50_ms": list(DRIFT)}  # the race: alike in every round
    assert not Judge(SPEC).unpaired(a, b) and numbers(front_of([a, b, c], SPEC)) == [0, 2]


def test_beaten_takes_only_configs_a_front_config_separates_from_on_every_timed_objective():
    """The configs a re-timing stops visiting (finalists._stop_beaten): b is as accurate as a and 1.5x slower
    in every round, beaten; c is less accurate and 2 % slower, tied within noise, so a close call, not beaten;
    d is more accurate, on the front; e is 3x slower but timed in another session (unpaired, within the
    factor the machine's speed moves by between sessions); f has no rounds; g is infeasible."""
    from adasearch.search.front.beyond_noise import beaten

    a, b, c, d = rec(0, 0.95, 1.0), rec(1, 0.95, 1.5), rec(2, 0.94, 1.02), rec(3, 0.97, 2.0)
    e, f, g = rec(4, 0.94, 1.9, session="2"), rec(5, 0.90, 3.0, rounds=False), rec(6, 0.90, 3.0)
    g.feasible = False
    assert numbers(front_of([a, b, c, d, e, f, g], SPEC)) == [0, 3]
    assert numbers(beaten([a, b, c, d, e, f, g], SPEC)) == [1]
    b.metrics[SESSIONS]["1"]["latency_p50_ms"] = [1.02 * t for t in DRIFT]  # 2 % slower: tied, no longer beaten
    assert beaten([a, b, c, d], SPEC) == []


def test_deterministic_objectives_alone_are_the_plain_pareto_front():
    spec = RunSpec(objectives=["accuracy", "gmacs"])
    recs = [rec(i, acc, 1.0) for i, acc in enumerate([0.9, 0.95, 0.93])]
    for r, g in zip(recs, [1.0, 3.0, 3.5]):
        r.metrics["gmacs"] = g
    assert numbers(front_of(recs, spec)) == [0, 1]
    assert close_calls(recs, spec) == [] and all(v == [] for v in equivalents(recs[:2], recs, spec).values())


def test_a_config_recorded_twice_is_on_the_front_once():
    a, twin = rec(0, 0.95, 1.0), rec(5, 0.95, 1.0)
    twin.config = a.config
    assert numbers(front_of([twin, a], SPEC)) == [0]


@pytest.mark.parametrize("seed", range(3))
def test_the_front_does_not_depend_on_the_order_of_records(seed):
    import random

    rng = random.Random(seed)
    recs = [rec(i, rng.choice([0.93, 0.95, 0.96, 0.97]), rng.uniform(0.6, 1.0)) for i in range(12)]
    expected = numbers(front_of(recs, SPEC))
    for _ in range(5):
        rng.shuffle(recs)
        assert numbers(front_of(recs, SPEC)) == expected


def test_a_run_races_its_close_calls_and_lists_the_equivalents(tmp_path, monkeypatch):
    """A real demo search whose re-timing is real except that every config's per-round figures are made
    those of the first, times 1.5 in every other round and / 1.5 in the rest, which rounds by the config's
    label: no timed difference is beyond noise anywhere. Configs whose factors fall in different rounds
    are undecided (their intervals straddle the 3 % threshold) and raced in more sessions; they stay
    equivalent; pareto.json, pareto.csv and the report list the equivalents."""
    import json
    import zlib

    import optuna
    import pandas as pd
    from click.testing import CliRunner

    from adasearch.cli import main
    from adasearch.measure.evaluator import Evaluator
    from adasearch.measure.interleaved import ROUND_FIGURES, ROUNDS
    from tests.helpers import write_run_spec

    interleaved, sessions = Evaluator.time_interleaved, []

    def all_alike(self, configs, budget_s, seed=0, stop=None):
        out = interleaved(self, configs, budget_s, seed=seed, stop=stop)
        first = out[configs[0]][ROUND_FIGURES]
        for config, figures in out.items():
            odd = zlib.crc32(config.label().encode()) % 2
            figures[ROUND_FIGURES] = {k: [x * 1.5 ** (1 if (i + odd) % 2 else -1) for i, x in enumerate(v)]
                                      for k, v in first.items()}  # fmt: skip
        sessions.append(len(configs))
        return out

    monkeypatch.setattr(Evaluator, "time_interleaved", all_alike)
    space = {"num_tokens": [1, 4, 32], "depth": [1, 3, 6]}  # 9 networks: a front with close calls, quickly
    spec = write_run_spec(tmp_path, space, objectives=("accuracy", "latency_p50_ms"), engine="exhaustive")
    r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    notes = [n for n in yaml_notes(out) if n.startswith("racing:")]
    assert len(sessions) >= 2 and notes, r.output  # the re-timing, then at least one race
    raced = int(notes[0].split()[1])
    assert notes[0].endswith(f"0 separated, {raced} stayed equivalent within noise")
    final = retimed_figures(optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}"))
    rounds = [s["latency_p50_ms"] for entry in final.values() for s in entry[SESSIONS].values()]
    assert rounds and all(len(x) >= ROUNDS for x in rounds)
    assert max(len(entry[SESSIONS]) for entry in final.values()) >= 2  # raced configs hold a race session too
    pareto = json.loads((out / "pareto.json").read_text())["pareto"]
    assert all(isinstance(row["equivalent"], list) and SESSIONS not in row["metrics"] for row in pareto)
    assert any(row["equivalent"] for row in pareto)
    table = pd.read_csv(out / "pareto.csv")
    assert SESSIONS not in table and SESSIONS not in pd.read_csv(out / "trials.csv")
    listed = {row["config"]: "; ".join(row["equivalent"]) for row in
              ({**row, "config": table["config"][i]} for i, row in enumerate(pareto))}  # fmt: skip
    assert listed == dict(zip(table["config"], table["equivalent"].fillna("")))
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    page = (out / "report.html").read_text()
    assert "<th>equivalent</th>" in page and next(e for e in listed.values() if e).split("; ")[0] in page


def test_a_re_timing_stops_timing_the_configs_a_front_config_has_beaten(tmp_path):
    """A real run, every round timed: N1 at depth 3 and 6 are less accurate than N8 at depth 1 (0.83 and 0.88
    against 0.94 on these 100 digits) and over 1.6x slower, so the re-timing's first check (after 16 of its
    rounds) stops them; the configs it stopped have no figures after that round, and none is on the front."""
    import optuna
    from click.testing import CliRunner

    from adasearch.cli import main
    from adasearch.measure.interleaved import STOP_MIN_ROUNDS, STOPPED
    from adasearch.search import trials
    from adasearch.spec import load_spec
    from tests.helpers import write_run_spec

    space = {"num_tokens": [1, 8, 32], "depth": [1, 3, 6]}
    # The timer asks its stop only after STOP_MIN_ROUNDS (16) rounds, and it chooses the rounds from the configs'
    # calls (interleaved.rounds_for): at 0.2 s a suite run on 12-07 stopped nothing (16 rounds or fewer: no
    # check). 0.6 s gives 25 rounds at least while the median config's call is under 3 ms.
    spec_path = write_run_spec(tmp_path, space, objectives=("accuracy", "latency_p50_ms"), engine="exhaustive",
                               final_latency_budget_s=0.6)  # fmt: skip
    r = CliRunner().invoke(main, ["run", str(spec_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    final = retimed_figures(study)
    recs = trials.records(study, load_spec(spec_path), final)
    stopped = {r.config.label(): final[str(r.number)][STOPPED] for r in recs if STOPPED in final.get(str(r.number), {})}
    assert {"N1-wfull-d3", "N1-wfull-dall"} <= set(stopped)
    for r in recs:
        if r.config.label() in stopped:
            done, rounds = stopped[r.config.label()]
            first = final[str(r.number)][SESSIONS]["1"]["latency_p50_ms"]
            assert done >= STOP_MIN_ROUNDS and len(first) == rounds > done
            assert None not in first[:done] and first[done:] == [None] * (rounds - done)
    front = {r.config.label() for r in front_of(recs, load_spec(spec_path))}
    assert front and not front & set(stopped)
    assert f"re-timing: {len(stopped)} of " in " ".join(yaml_notes(out))


def test_a_re_timing_under_a_latency_constraint_without_a_timed_objective_times_every_round(tmp_path):
    """Objectives accuracy and gmacs, latency only a constraint: nothing can beat a config beyond noise, so
    the re-timing stops none (it raised an IndexError looking for a timed objective)."""
    import optuna
    from click.testing import CliRunner

    from adasearch.cli import main
    from adasearch.measure.interleaved import STOPPED
    from tests.helpers import write_run_spec

    spec = write_run_spec(tmp_path, {"num_tokens": [1, 8, 32], "depth": [1, 3, 6]}, objectives=("accuracy", "gmacs"),
                          constraints={"latency_p50_ms": {"max": 100}}, engine="exhaustive",
                          final_latency_budget_s=0.2)  # fmt: skip
    r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    final = retimed_figures(optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}"))
    assert final and not any(STOPPED in entry for entry in final.values())


def yaml_notes(out) -> list:
    from adasearch.yaml_io import read_yaml

    return read_yaml(out / "run.yaml").get("notes") or []
