"""RunFolder: every command reads and writes results through it, and a bad folder is one line naming the file.

Unwritable folders are real: a read-only bind mount in a private mount namespace (`unshare -m`), since
permission bits do not stop root, which CI runs as.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.errors import UserError
from adasearch.run_folder import RunFolder, write_atomic
from tests.helpers import one_line_error, run_once, write_run_spec

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"num_tokens": [1, 32], "depth": [1, 6]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_once(tmp_path_factory.mktemp("folder"), SPACE, limit=40)


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    return copy


def commands(folder: Path, tmp_path: Path) -> dict:
    """Every command that reads a results folder, as CLI arguments. serve fails before it binds a port."""
    return {
        "report": ["report", str(folder)],
        "report csv": ["report", str(folder), "--format", "csv"],
        "export": ["export", str(folder), "--pick", "max accuracy", "-o", str(tmp_path / "d.yaml")],
        "serve": ["serve", str(folder), "--port", "0"],
    }


def test_a_missing_run_yaml_is_one_line_in_every_command(run_copy, tmp_path):
    (run_copy / "run.yaml").unlink()
    for _name, args in commands(run_copy, tmp_path).items():
        one_line_error(CliRunner().invoke(main, args), "run.yaml")


def test_a_corrupt_pareto_json_is_one_line_in_every_command(run_copy, tmp_path):
    for text in ("{not json", json.dumps({"pareto": [{"name": "x"}]}), "[1, 2]"):
        (run_copy / "pareto.json").write_text(text)
        for _name, args in commands(run_copy, tmp_path).items():
            one_line_error(CliRunner().invoke(main, args), "pareto.json")


@pytest.mark.parametrize("text", ['trial,config\n1,"unclosed\n', "a,b\n1,2\n", "trial,config,feasible\n1,x,maybe\n"])
def test_a_corrupt_trials_csv_is_one_line(run_copy, text):
    (run_copy / "trials.csv").write_text(text)
    one_line_error(CliRunner().invoke(main, ["report", str(run_copy)]), "trials.csv")


def test_a_run_yaml_of_something_else_is_one_line(run_copy, tmp_path):
    (run_copy / "run.yaml").write_text(yaml.safe_dump({"spec": {"objectives": "accuracy"}}))
    for name, args in commands(run_copy, tmp_path).items():
        if name != "serve":  # serve needs only the spec's model and hardware
            one_line_error(CliRunner().invoke(main, args), "run.yaml", "objectives")


def test_export_to_a_folder_is_one_line(finished_run, tmp_path):
    r = CliRunner().invoke(main, ["export", str(finished_run), "--pick", "max accuracy", "-o", str(tmp_path)])
    one_line_error(r, str(tmp_path), "is a folder")


def test_an_output_that_is_a_file_is_one_line(tmp_path):
    spec = write_run_spec(tmp_path, SPACE, limit=40)
    blocker = tmp_path / "out"
    blocker.write_text("a file where the results folder should be")
    r = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    one_line_error(r, str(blocker), "not a folder")


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path).create()
    folder.write_text("pareto.json", '{"old": true}')

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError, match=r"pareto.json: cannot write it \(No space left on device\)"):
        write_atomic(tmp_path / "pareto.json", '{"new": true}')
    assert (tmp_path / "pareto.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.json"]  # no temp file left behind


def read_only(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`adasearch ARGS` with `folder` mounted read-only in a private mount namespace."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a read-only bind mount")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 99; shift; exec "$@"'
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(folder), sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode == 99:
        pytest.skip(f"this machine refuses a read-only bind mount: {out.stderr.strip()[:200]}")
    return out


def assert_one_line(out: subprocess.CompletedProcess, *needles) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_read_only_results_folder_is_one_line(run_copy, tmp_path):
    assert_one_line(read_only(run_copy, "report", str(run_copy)), "report.html", "Read-only file system")
    out = read_only(tmp_path, "export", str(run_copy), "--pick", "max accuracy", "-o", str(tmp_path / "x.yaml"))
    assert_one_line(out, "x.yaml", "Read-only file system")


def test_a_read_only_output_folder_stops_a_run_before_it_starts(tmp_path):
    spec = write_run_spec(tmp_path, SPACE, limit=40)
    (tmp_path / "out").mkdir()
    out = read_only(tmp_path / "out", "run", str(spec), "--no-progress")
    assert_one_line(out, str(tmp_path / "out"), "not writable")
    assert list((tmp_path / "out").iterdir()) == []


def test_only_run_folder_names_the_results_files():
    """RunFolder owns the results folder: no other module has a results file's name as a string constant
    (docstrings aside), so a rename happens in one place and messages take paths from it."""
    import ast
    import re

    from adasearch import run_folder

    names = (run_folder.RUN, run_folder.TRIALS, run_folder.PARETO_CSV, run_folder.PARETO_JSON, run_folder.LATENCY_MODEL)
    pattern = re.compile("|".join(re.escape(n) for n in names))
    package = ROOT / "adasearch"
    found = []
    for path in package.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if pattern.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, found
