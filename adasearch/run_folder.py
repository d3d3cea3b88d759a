"""RunFolder: the results folder of one run, and the only code that reads or writes its files.

    run.yaml        resolved spec + environment + counts
    study.db        Optuna storage (written by Optuna itself; resumable; optuna-dashboard opens it)
    trials.csv      every completed trial: knobs, metrics, feasibility
    pareto.csv      the Pareto trials, same columns
    pareto.json     the front as serving reads it: objectives, constraints, environment, one row a config
    latency_model.json  the target's part timings (engine: model, `adasearch profile`), reused by fingerprint
    deployments/    one YAML per Pareto config, named by its figures
    report.html, report.md, report_files/, report_*.csv|json   written by `adasearch report`
    exports/        <name>.onnx + <name>.yaml, written by `adasearch export --format onnx`
    .lock           held (flock) by the run writing the folder, for its whole life

run, report, export and serve all come through here. Every problem with a file (missing, corrupt,
foreign, unwritable) is a one-line UserError naming that file. Files are written atomically (a temp
file in the same folder, then a rename), so an interrupted write never leaves half a pareto.json.

Imports only the standard library and yaml (pandas inside the table methods): serving code reads
results folders without the search stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import yaml

from adasearch.errors import UserError
from adasearch.yaml_io import parse_yaml

RUN, TRIALS, PARETO_CSV, PARETO_JSON, DEPLOYMENTS = "run.yaml", "trials.csv", "pareto.csv", "pareto.json", "deployments"
STUDY_DB = "study.db"  # the default storage (written by Optuna)
EXPORTS = "exports"  # `adasearch export --format onnx`: <name>.onnx and its deployment YAML
LATENCY_MODEL = "latency_model.json"  # the target's latency model (measure/latency_model.py), with its fingerprint
REPORT = ("report.html", "report.md", "report_files", "report_pareto.csv", "report_pareto.json", "report_trials.csv",
          "report_trials.json")  # fmt: skip
LOCK = ".lock"  # flock'ed by the run that writes the folder; the kernel releases it when that process ends
TABLE_COLUMNS = ("trial", "config", "feasible")  # every trials.csv / pareto.csv has at least these


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def write_atomic(target: Union[str, Path], data: Union[str, bytes]) -> Path:
    """Write a file whole or not at all: a temp file beside the target, then os.replace. A folder in
    the way, or a place that cannot be written, is a one-line UserError naming the path."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"{target}: is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise UserError(f"{target}: cannot write it ({e.strerror or _first_line(e)})")
    return target


class RunFolder:
    """One results folder. Construct it with the folder's path; nothing is read or written until asked."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------- writing

    def create(self) -> RunFolder:
        """Make the folder (and parents) and check that it can be written; a one-line error if not."""
        try:  # exists() too raises, on a name over the file system's limit
            if self.path.exists() and not self.path.is_dir():
                raise UserError(f"{self.path}: output exists and is not a folder; choose another --output")
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the results folder ({e.strerror or _first_line(e)})")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(f"{self.path}: the results folder is not writable; choose another --output")
        return self

    @contextlib.contextmanager
    def locked(self):
        """Hold the folder for one run: an exclusive flock on its .lock file while the block runs. Another
        run on the same folder (another process, whatever its spec) is refused in one line instead of mixing
        its results with this one's. The kernel drops the lock when this process ends, even by kill -9, so
        a crashed run never leaves the folder locked. Workers of this run do not lock: they write the study."""
        path = self.create().path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{path}: cannot open the results folder's lock ({e.strerror or _first_line(e)})")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                raise UserError(
                    f"{self.path}: another adasearch run (pid {holder}) is writing into this folder; wait for it "
                    f"to finish, or use another --output"
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message of a run refused meanwhile
            yield self
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def claim(self, run_name: str) -> None:
        """A results folder belongs to one run: refuse (one line) to write `run_name`'s results into a
        folder that holds another run's."""
        if not (self.path / RUN).is_file():
            return
        try:
            owner = (self.read_spec() or {}).get("name")
        except UserError:
            owner = None
        if owner != run_name:
            raise UserError(
                f"{self.path}: holds the results of run {owner!r}, not {run_name!r}; use another --output, "
                f"or --overwrite to replace them"
            )

    def clear(self, keep_storage: bool) -> None:
        """Remove a run's files (results, report, and the default storage unless keep_storage), for --overwrite.
        Files adasearch did not write stay."""
        names = [RUN, TRIALS, PARETO_CSV, PARETO_JSON, DEPLOYMENTS, EXPORTS, *REPORT] + (
            [] if keep_storage else [STUDY_DB]
        )
        for name in names:
            path = self.path / name
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as e:
                raise UserError(f"{path}: cannot remove it for --overwrite ({e.strerror or _first_line(e)})")

    def _write(self, name: str, data: Union[str, bytes]) -> Path:
        return write_atomic(self.path / name, data)

    def write_text(self, name: str, text: str) -> Path:
        return self._write(name, text)

    def write_bytes(self, name: str, data: bytes) -> Path:
        return self._write(name, data)

    def write_run(self, doc: dict) -> Path:
        return self._write(RUN, yaml.safe_dump(doc, sort_keys=False))

    def write_table(self, name: str, rows: list) -> Path:
        """A list of flat dicts as CSV (trials.csv, pareto.csv, report_*.csv); columns in first-seen order."""
        import pandas as pd

        return self._write(name, pd.DataFrame(rows).to_csv(index=False))

    def write_trials(self, rows: list) -> Path:
        return self.write_table(TRIALS, rows)

    def write_front(self, rows: list) -> Path:
        return self.write_table(PARETO_CSV, rows)

    def write_pareto(self, doc: dict) -> Path:
        return self._write(PARETO_JSON, json.dumps(doc, indent=2))

    def write_latency_model(self, doc: dict) -> Path:
        return self._write(LATENCY_MODEL, json.dumps(doc, indent=1))

    def read_latency_model(self) -> tuple:
        """(the stored latency model's document, None), or (None, why it cannot be used): absent,
        unreadable or not JSON. Never raises: a model that cannot be read is rebuilt, not fatal."""
        path = self.path / LATENCY_MODEL
        if not path.is_file():
            return None, "none stored yet"
        if path.stat().st_size > 64 * 1024 * 1024:
            return None, f"{path}: larger than 64 MiB"
        try:
            return json.loads(path.read_text()), None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            return None, f"{path}: unreadable ({type(e).__name__})"

    def exports_dir(self) -> Path:
        """Where `export --format onnx` writes by default (kept apart from deployments/, which each run rewrites)."""
        return self.check().path / EXPORTS

    def write_deployments(self, docs: dict) -> None:
        """deployments/<name> for each (name -> document); the folder holds exactly these afterwards
        (the front may have changed since the last write)."""
        folder = self.path / DEPLOYMENTS
        if folder.exists():
            try:
                shutil.rmtree(folder)
            except OSError as e:
                raise UserError(f"{folder}: cannot replace it ({e.strerror or _first_line(e)})")
        for name, doc in docs.items():
            self._write(f"{DEPLOYMENTS}/{name}", yaml.safe_dump(doc, sort_keys=False))

    # ---------------------------------------------------------------- reading

    def check(self) -> RunFolder:
        if not self.path.is_dir():
            raise UserError(f"{self.path}: no such results folder (give the folder that `adasearch run` wrote)")
        return self

    def _read_text(self, name: str) -> str:
        path = self.check().path / name
        if not path.is_file():
            raise UserError(f"{self.path}: not a results folder of `adasearch run` (no {name})")
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or type(e).__name__})")

    def _document(self, name: str):
        """A JSON (by its suffix) or YAML file of the folder as Python data, or a one-line UserError."""
        path, text = self.path / name, self._read_text(name)
        try:
            return json.loads(text) if name.endswith(".json") else parse_yaml(text, str(path))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})")
        except RecursionError:
            raise UserError(f"{path}: not valid JSON (nested too deeply)")

    def read_run(self) -> dict:
        """run.yaml: its resolved `spec` (model, hardware, data, objectives, ...), `environment`, counts."""
        path, doc = self.path / RUN, self._document(RUN)
        if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
            raise UserError(f"{path}: expected a mapping with a 'spec' section; not a run.yaml of adasearch")
        spec = doc["spec"]
        objectives = spec.get("objectives", [])
        if not isinstance(objectives, list) or not all(
            isinstance(o, dict) and isinstance(o.get("metric"), str) and o.get("direction") in ("maximize", "minimize")
            for o in objectives
        ):
            raise UserError(f"{path}: spec.objectives must be a list of {{metric, direction}} mappings")
        for key in ("constraints", "hardware", "data"):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise UserError(f"{path}: spec.{key} must be a mapping")
        if not all(isinstance(b, dict) for b in (spec.get("constraints") or {}).values()):
            raise UserError(f"{path}: spec.constraints must map metrics to {{min, max}} mappings")
        for key in ("environment", "space", "model_config"):
            if doc.get(key) is not None and not isinstance(doc[key], dict):
                raise UserError(f"{path}: {key} must be a mapping")
        return doc

    def read_spec(self) -> dict:
        return self.read_run()["spec"]

    def read_pareto(self) -> dict:
        """pareto.json: {"objectives", "constraints", "environment", "pareto": [{trial, name, config, metrics}]}."""
        path, doc = self.path / PARETO_JSON, self._document(PARETO_JSON)
        rows = doc.get("pareto") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(
            isinstance(r, dict)
            and isinstance(r.get("config"), dict)
            and isinstance(r.get("metrics"), dict)
            and isinstance(r.get("name"), str)
            for r in rows
        ):
            raise UserError(f"{path}: expected an object with a 'pareto' list of {{name, config, metrics}} rows")
        return doc

    def read_table(self, name: str):
        """trials.csv or pareto.csv as a pandas DataFrame (an empty pareto.csv is an empty front)."""
        import pandas as pd

        path = self.path / name
        text = self._read_text(name)
        if not text.strip():
            return pd.DataFrame(columns=list(TABLE_COLUMNS))
        try:
            import io

            table = pd.read_csv(io.StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
            raise UserError(f"{path}: not a CSV table of trials ({_first_line(e)})")
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"{path}: not a table of trials (no column {missing[0]!r})")
        if table["feasible"].dtype != bool:
            flags = table["feasible"].astype(str).str.lower()
            if not flags.isin(["true", "false"]).all():
                raise UserError(f"{path}: column 'feasible' holds values other than True/False")
            table["feasible"] = flags == "true"
        return table

    def holds_trials(self) -> bool:
        """Whether trials.csv lists at least one trial (an unreadable one counts: results all the same)."""
        path = self.path / TRIALS
        if not path.is_file():
            return False
        try:
            return len(path.read_text().strip().splitlines()) > 1  # rows under the header
        except (OSError, UnicodeDecodeError):
            return True

    def read_trials(self):
        return self.read_table(TRIALS)

    def read_front(self):
        return self.read_table(PARETO_CSV)


def deployment_doc(row: dict, run: dict, macs_convention: Optional[str] = None) -> dict:
    """One pareto.json row as a deployment file: what serving code needs to reproduce its figures, from
    any directory. `run` is run.yaml's document: its spec's model (an absolute path where local) and
    the device the run actually measured on (the spec may say "auto")."""
    spec = run.get("spec") or {}
    hardware = dict(spec.get("hardware") or {})
    measured_on = (run.get("environment") or {}).get("device")
    if measured_on:
        hardware["device"] = measured_on
    doc = {
        "config": row["config"],
        "metrics": row["metrics"],
        "model": spec.get("model"),
        "hardware": hardware,
        "data": spec.get("data"),
        "macs_convention": macs_convention or run.get("macs_convention"),
        "trial": row.get("trial"),
    }
    if isinstance(row.get("guarantee"), dict):  # a certified config: {metric, max, confidence, samples, method}
        doc["guarantee"] = row["guarantee"]
    return doc
