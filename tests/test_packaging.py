"""A regular (non-editable) install must carry everything the CLI loads at run time."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_demo_model_and_the_ready_search_spaces(tmp_path):
    pytest.importorskip("setuptools")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("adasearch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for ready in ["demo", "in1k", "in1k-stages"]:
        assert f"adasearch/search_spaces/{ready}.yaml" in names
    assert {"adasearch/model/demo/config.json", "adasearch/model/demo/model.safetensors"} <= names
