"""`adasearch report`: HTML and Markdown with the plots, checked in a real headless browser."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from PIL import Image

from adasearch.cli import main
from tests.helpers import write_run_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    spec = write_run_spec(
        tmp,
        name="r",
        limit=80,
        objectives=["accuracy", "gmacs", "latency_p50_ms"],  # three objectives: pairwise panels
        constraints={"accuracy": {"min": 0.9}, "gmacs": {"max": 0.0004}},
        latency_budget_s=0.005,
        final_latency_budget_s=0.01,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(tmp / "cache"))
        r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["report", str(tmp / "out")])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def test_report_files(run_folder):
    page = (run_folder / "report.html").read_text()
    # self-contained: front, held-out accuracy (the run holds half its images out), the latency model's
    # predictions against the re-timing (auto picks engine: model here), hypervolume, knob effects
    assert page.count("data:image/png;base64,") == 5
    assert "Latency model: predicted against measured" in page
    assert "How sure is this number?" in page and "images the search never saw" in page
    assert 'src="http' not in page and "<script" not in page
    pareto = json.loads((run_folder / "pareto.json").read_text())["pareto"]
    assert f"Pareto-optimal configs ({len(pareto)})" in page
    for p in pareto:
        assert f"{p['metrics']['accuracy']:.4g}" in page
    md = (run_folder / "report.md").read_text()
    assert "![Pareto front](report_files/front.png)" in md
    for name in ("front", "heldout", "hypervolume", "knobs", "predicted"):
        assert Image.open(run_folder / "report_files" / f"{name}.png").size[0] > 300


def test_table_exports(run_folder):
    for fmt in ("csv", "json"):
        r = CliRunner().invoke(main, ["report", str(run_folder), "--format", fmt])
        assert r.exit_code == 0, r.output
    rows = json.loads((run_folder / "report_pareto.json").read_text())
    assert len(rows) == len(json.loads((run_folder / "pareto.json").read_text())["pareto"])
    trials = (run_folder / "trials.csv").read_text().count("\n")
    assert (run_folder / "report_trials.csv").read_text().count("\n") == trials > 3


def test_report_of_a_non_run_folder(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "not a results folder" in r.output


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)")
def test_report_renders_in_a_real_browser(run_folder, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1300,3000",
            f"--screenshot={shot}",
            (run_folder / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = Image.open(shot).convert("RGB")

    # matplotlib's tab:blue (31, 119, 180) draws the front, the hypervolume curve and the knob means:
    # if the embedded PNGs did not decode in the browser, there would be none on the page.
    def blue(region):
        return sum(
            1 for r, g, b in region.get_flattened_data() if abs(r - 31) < 30 and abs(g - 119) < 30 and abs(b - 180) < 30
        )

    h = img.height
    assert blue(img.crop((0, 0, img.width, h // 3))) > 100  # the front, near the top
    assert blue(img) > 1000
