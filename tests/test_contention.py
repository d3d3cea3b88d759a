"""Timing that knows the machine is busy (measure/contention.py): other processes' CPU share, the load
average and the references' drift are recorded in run.yaml and the report, and a busy machine is said.

CPU burners are real processes, detached from the test's process tree (helpers.cpu_burners), so they count
as "other processes" to a monitor in this process too; each is bounded in time and killed by its PID.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adasearch.measure.contention import BUSY_SHARE, ContentionMonitor, report_line, summary_lines, warning
from adasearch.measure.interleaved import ROUND_FIGURES
from adasearch.metrics import P50
from adasearch.run_folder import RUN
from tests.helpers import cpu_burners as burners
from tests.helpers import write_run_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_tokens": [1, 32], "depth": [1, 6]}


def busy_count() -> int:
    """Enough burners to keep every CPU busy: two on the 2-core machine the issue was found on."""
    return max(2, os.cpu_count() or 2)


def timed_spec(tmp_path: Path) -> Path:
    """A short timed search whose latency bound no config can meet."""
    return write_run_spec(
        tmp_path, TINY, limit=40, engine="exhaustive", objectives=("accuracy", "latency_p50_ms"),
        constraints={"latency_p90_ms": {"max": 0.001}}, hardware={"threads": 1}, latency_budget_s=0.05,
        final_latency_budget_s=0.2,
    )  # fmt: skip


def run_cli(spec: Path, *flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--no-progress", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "300"})


def contention_of(out: Path) -> dict:
    return yaml.safe_load((out / RUN).read_text())["environment"]["contention"]


def test_a_busy_machine_is_measured_recorded_and_said(tmp_path):
    spec = timed_spec(tmp_path)
    with burners(busy_count()):
        done = run_cli(spec, "--quiet-wait", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    contention = contention_of(tmp_path / "out")
    assert contention["other_cpu_share"] > 0.4, contention
    assert contention["load_avg"] > 0 and contention["reference_cv"] is not None
    assert contention["waited_s"] == 2.0  # busy all along: the quiet-wait ran out its bound, and went on
    text = " ".join((done.stdout + done.stderr).split())
    assert "warning: the machine was busy while timing" in text and "timed figures are inflated by about" in text
    assert "no config satisfies the constraints, and the machine was busy while timing" in text
    assert "latency_p90_ms may be missed because of that alone" in text
    report = subprocess.run([sys.executable, str(ROOT / "cli.py"), "report", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "BUSY: timed figures are inflated" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.quiet_machine
def test_a_quiet_machine_has_neither_the_share_nor_the_warning(tmp_path):
    probe = ContentionMonitor()
    with probe.window():
        time.sleep(2)
    if probe.summary()["other_cpu_share"] > BUSY_SHARE / 2:
        pytest.skip(f"the machine is busy already ({probe.summary()})")
    done = run_cli(timed_spec(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    contention = contention_of(tmp_path / "out")
    assert contention["other_cpu_share"] <= BUSY_SHARE, contention
    assert "busy" not in done.stdout + done.stderr


def test_others_are_counted_and_this_process_is_not():
    """A window of this process's own work on a quiet-enough machine counts little of it as others'; the
    same window beside burners counts most of the machine."""
    own = ContentionMonitor()
    with own.window():
        end = time.process_time() + 1.0
        while time.process_time() < end:  # this process burns; it is not "other"
            pass
    loaded = ContentionMonitor()
    with burners(busy_count()):
        time.sleep(0.5)  # the burners start
        with loaded.window():
            time.sleep(2)
    assert loaded.summary()["other_cpu_share"] > 0.4
    assert own.summary()["other_cpu_share"] < loaded.summary()["other_cpu_share"]


def test_visits_and_their_dispersion_by_hand():
    monitor = ContentionMonitor()

    class _Evaluator:  # the interleaved timer's result: per config, each round's figures
        def time(self, *a):
            pass

        def profile_latency(self, *a):
            pass

        def time_interleaved(self, configs, budget_s):
            time.sleep(0.2)  # a window of several clock ticks: one shorter than a tick may count no CPU time
            return {c: {ROUND_FIGURES: {P50: [1.0 * c, 2.0 * c]}} for c in configs}

    evaluator = _Evaluator()
    monitor.watch(evaluator)
    evaluator.time_interleaved([1, 2], 0.1)
    assert monitor.visits == {1: [1.0, 2.0], 2: [2.0, 4.0]}  # each round's p50 is a visit
    monitor.visits = {"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0], "c": [4.0]}  # c: one visit, no spread
    summary = monitor.summary()
    # a: sample sd 1 / mean 2 = 0.5, median 2 / min 1 - 1 = 1; b: 0 and 0; the medians over a and b:
    assert summary["reference_cv"] == pytest.approx(0.25) and summary["inflation"] == pytest.approx(0.5)


def test_quiet_wait_is_bounded_and_only_after_a_busy_window():
    monitor = ContentionMonitor(quiet_wait_s=2)
    with monitor.window():
        pass
    assert monitor.waited_s == 0  # nothing busy seen yet: no wait
    with burners(busy_count()):
        time.sleep(0.5)
        monitor.last_share = 1.0  # the last window was busy
        for _ in range(3):
            with monitor.window():
                pass
    assert monitor.waited_s == 2  # never past its bound, however long the machine stays busy


def test_the_lines_by_hand():
    quiet = {"other_cpu_share": 0.1, "load_avg": 0.5, "reference_cv": 0.02, "inflation": 0.03, "waited_s": 0}
    busy = {**quiet, "other_cpu_share": 0.62, "load_avg": 3.9, "inflation": 0.4}
    assert warning(quiet) is None and warning(None) is None and summary_lines(quiet, [], []) == []
    assert "other processes used 62% of its CPU, load average 3.9" in warning(busy)
    assert "inflated by about 40%" in warning(busy)
    assert report_line(quiet).startswith("quiet: other processes used 10%")
    assert report_line(busy).startswith("BUSY") and report_line(None) == "not recorded"
