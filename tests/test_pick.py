"""The --pick language: parsing, operators, the shared tie-break, and errors that say what was expected."""

import pytest

from adasearch.errors import UserError
from adasearch.pick import Condition, NoMatch, Pick, parse_pick, pick

ROWS = [
    {"name": "a.yaml", "metrics": {"accuracy": 0.95, "latency_p90_ms": 9.0, "gflops": 3.0}},
    {"name": "b.yaml", "metrics": {"accuracy": 0.90, "latency_p90_ms": 4.0, "gflops": 1.0}},
    {"name": "c.yaml", "metrics": {"accuracy": 0.80, "latency_p90_ms": 2.0, "gflops": 1.0}},
]


def test_parse_pick():
    assert parse_pick("max accuracy") == Pick("max", "accuracy")
    assert parse_pick("MIN latency_p50_ms Where accuracy>=0.95 and gflops != 1e-3") == Pick(
        "min", "latency_p50_ms", (Condition("accuracy", ">=", 0.95), Condition("gflops", "!=", 0.001))
    )


def test_pick_ties_go_to_the_faster_config_like_deployment_choose():
    rows = [
        {"name": "slow.yaml", "metrics": {"accuracy": 0.9, "latency_p90_ms": 5.0}},
        {"name": "fast.yaml", "metrics": {"accuracy": 0.9, "latency_p90_ms": 3.0}},
        {"name": "untimed.yaml", "metrics": {"accuracy": 0.9}},
    ]
    assert pick(rows, "max accuracy")["name"] == "fast.yaml"
    assert pick([rows[2], rows[0]], "max accuracy")["name"] == "slow.yaml"  # a measured latency beats none


@pytest.mark.parametrize(
    "expr, name",
    [
        ("max accuracy", "a"),
        ("min latency_p90_ms", "c"),
        ("max accuracy where latency_p90_ms <= 4", "b"),
        ("max accuracy where latency_p90_ms < 4", "c"),
        ("min gflops where accuracy >= 0.9", "b"),
        ("min gflops", "b"),  # b and c tie on gflops: the more accurate wins, although c is faster
        ("max latency_p90_ms where accuracy > 0.95", None),
        ("max accuracy where gflops == 1 and latency_p90_ms > 2", "b"),
        ("max accuracy where gflops != 3", "b"),
        ("min accuracy where gflops >= 1 and gflops <= 1 and latency_p90_ms < 10", "c"),
    ],
)
def test_pick_operators(expr, name):
    if name is None:
        with pytest.raises(NoMatch):
            pick(ROWS, expr)
    else:
        assert pick(ROWS, expr)["name"] == name + ".yaml"


def test_pick_takes_plain_metric_dicts():
    assert pick([r["metrics"] for r in ROWS], "min gflops where accuracy < 0.85") == ROWS[2]["metrics"]


def test_no_match_lists_the_closest_rows_with_what_they_violate():
    with pytest.raises(NoMatch) as e:
        pick(ROWS, "max accuracy where latency_p90_ms <= 3 and accuracy >= 0.9")
    msg = str(e.value)
    assert "\n" not in msg
    closest = msg.split("closest: ")[1]
    # summed relative violations: c misses accuracy by 11%, b latency by 33%, a latency by 200%
    assert closest.index("c:") < closest.index("b:") < closest.index("a:")
    assert "b: latency_p90_ms=4 (needs <= 3)" in closest and "c: accuracy=0.8 (needs >= 0.9)" in closest


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(UserError, match=r"unknown metric 'latency'.*allowed: accuracy, latency_p90_ms, gflops"):
        pick(ROWS, "max accuracy where latency <= 3")


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("", "expected 'max' or 'min' at the end"),
        ("best accuracy", "expected 'max' or 'min', got 'best'"),
        ("max 3", "expected a metric name, got '3'"),
        ("max accuracy if gflops < 1", "expected 'where', got 'if'"),
        ("max accuracy where gflops = 1", "unexpected '=' at column 27"),
        ("max accuracy where gflops <= fast", "expected a number, got 'fast'"),
        ("max accuracy where gflops <= 1 gflops <= 2", "expected 'and', got 'gflops'"),
        ("max accuracy where gflops <= 1 and", "expected a metric name at the end"),
        ("max accuracy; drop", "unexpected ';'"),
    ],
)
def test_syntax_errors_show_the_expression_and_what_was_expected(expr, expected):
    with pytest.raises(UserError) as e:
        parse_pick(expr)
    assert f"{expr!r}" in str(e.value) and expected in str(e.value)
