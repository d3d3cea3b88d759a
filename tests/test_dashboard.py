"""optuna-dashboard, a real server on a free loopback port, shows what a run stores: the objectives by
name and each trial's constraint values."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from adasearch.cli import main
from tests.helpers import free_port, write_run_spec

DASHBOARD = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")


@pytest.mark.skipif(not Path(DASHBOARD).exists(), reason="optuna-dashboard is not installed (pip install -e .[test])")
def test_the_dashboard_shows_objective_names_and_constraints(tmp_path):
    spec = write_run_spec(tmp_path, {"num_tokens": [1, 32], "depth": [1, 6]}, limit=40,
                          objectives=("accuracy", "gmacs"), constraints={"accuracy": {"min": 0.9}})  # fmt: skip
    r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    server = subprocess.Popen(
        [DASHBOARD, f"sqlite:///{tmp_path / 'out' / 'study.db'}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.time() + 30
            while True:
                assert server.poll() is None, (tmp_path / "dashboard.log").read_text()[-2000:]
                try:
                    studies = client.get("/api/studies").json()["study_summaries"]
                    break
                except httpx.TransportError:
                    assert time.time() < deadline, "the dashboard did not answer within 30 s"
                    time.sleep(0.2)
            assert [s["study_name"] for s in studies] == ["t"]
            detail = client.get(f"/api/studies/{studies[0]['study_id']}").json()
        assert detail["objective_names"] == ["accuracy", "gmacs"]
        constraints = [t["constraints"] for t in detail["trials"]]
        assert constraints and all(len(c) == 1 for c in constraints)
        # accuracy >= 0.9 as Optuna's "<= 0 is feasible": 0.9 - accuracy
        for trial, c in zip(detail["trials"], constraints):
            accuracy = trial["values"][0]
            assert c[0] == pytest.approx(0.9 - accuracy)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
