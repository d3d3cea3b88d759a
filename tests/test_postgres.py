"""search.storage on a real PostgreSQL server: --workers N, kill -9 of a worker or of the driver, a wrong password.

A module fixture starts PostgreSQL (initdb into a temp folder, pg_ctl on a free loopback port, run as the
`postgres` user when the tests run as root) and always stops it. Without the server binaries or psycopg the
module is skipped, loudly.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from glob import glob
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.search import storage as storage_mod
from tests.helpers import DEMO_SPACE, free_port, write_run_spec

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "adasearch", "Pg-s3cret_7f2a"
COMPLETE, RUNNING, WAITING, FAIL = (
    getattr(optuna.trial.TrialState, s) for s in ("COMPLETE", "RUNNING", "WAITING", "FAIL")
)
ONE_THREAD = {"hardware": {"threads": 1}}  # 2 cores shared by 3 processes and the server
# Trials timed for ~0.25 s each (an always-met latency bound), so that a kill lands mid-trial; accuracy and
# gmacs, the objectives, do not depend on timing.
SLOW = {"constraints": {"latency_p50_ms": {"max": 1e6}}, "latency_budget_s": 0.25, **ONE_THREAD}


def _skip(reason: str):
    warnings.warn(f"PostgreSQL tests SKIPPED: {reason}", stacklevel=2)
    pytest.skip(f"PostgreSQL tests SKIPPED: {reason}", allow_module_level=True)


def _binary(name: str):
    found = shutil.which(name) or sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class Server:
    """A throwaway PostgreSQL cluster in a temp folder, on 127.0.0.1 only."""

    def __init__(self):
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            _skip("initdb/pg_ctl not found (apt-get install postgresql)")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                import pwd

                self.pw = pwd.getpwnam("postgres")
            except KeyError:
                _skip("running as root and there is no `postgres` user to run the server as")
        self.dir = Path(tempfile.mkdtemp(prefix="adasearch-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()

    def _cmd(self, *cmd):
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)

    def start(self):
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            for p in (self.dir, pwfile):
                os.chown(p, self.pw.pw_uid, self.pw.pw_gid)
        os.chmod(self.dir, 0o700)
        run = dict(capture_output=True, text=True, timeout=120)
        r = subprocess.run(
            self._cmd(self.initdb, "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
                      "--auth-local=trust", "-E", "UTF8", "--no-sync"),
            **run,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c max_connections=30"
        r = subprocess.run(
            self._cmd(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o", opts,
                      "start"),
            **run,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr + self.log()

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text()[-3000:]
        except OSError:
            return ""

    def stop(self):
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        subprocess.run(
            self._cmd(self.pg_ctl, "-D", str(self.data), "stop", "-m", "immediate", "-w", "-t", "30"),
            capture_output=True,
            timeout=60,
        )
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)  # still there after pg_ctl stop: ended by its pid
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str, password: str = PASSWORD, port=None) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def sql(self, database: str, query: str, *args) -> list:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database, autocommit=True
        ) as conn:
            cur = conn.execute(query, args or None)
            return cur.fetchall() if cur.description else []

    def new_database(self, name: str) -> str:
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def pg():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip('psycopg is not installed (pip install -e ".[test]")')
    server = Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def reader(url: str):
    from sqlalchemy.pool import NullPool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})  # holds no connection


def load(url: str, name: str = "t"):
    return optuna.load_study(study_name=name, storage=reader(url))


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--no-progress"])


def check_consistent(study, budget: int, workers: int) -> list:
    """No trial number lost or duplicated, none left RUNNING, every complete one with its figures, the
    budget of distinct networks met (each other worker may finish the one in flight)."""
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert not [t.number for t in trials if t.state == RUNNING]
    complete = [t for t in trials if t.state == COMPLETE]
    assert all("metrics" in t.user_attrs and "key" in t.user_attrs for t in complete)
    assert budget <= len({t.user_attrs["key"] for t in complete}) <= budget + workers - 1
    return trials


def spawned_workers(pid: int) -> list:
    """The multiprocessing workers among a process's children (not its resource tracker)."""
    children = []
    for path in glob(f"/proc/{pid}/task/*/children"):
        try:
            children += [int(c) for c in Path(path).read_text().split()]
        except OSError:
            pass
    out = []
    for c in children:
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


def running_trial_of(server: Server, db: str, pid: int):
    """The number of the RUNNING trial that process pid is measuring (its params all drawn), or None."""
    rows = server.sql(
        db,
        "SELECT t.number, a.value_json FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND a.key = %s "
        "AND (SELECT count(*) FROM trial_params p WHERE p.trial_id = t.trial_id) = %s",
        storage_mod.OWNER,
        len(DEMO_SPACE),
    )
    return next((n for n, owner in rows if json.loads(owner).get("pid") == pid), None)


def complete_count(server: Server, db: str) -> int:
    try:
        return server.sql(db, "SELECT count(*) FROM trials WHERE state = 'COMPLETE'")[0][0]
    except Exception:  # the schema is being created
        return 0


def kill_mid_trial(server: Server, db: str, pid: int, proc, after: int, log: Path) -> int:
    """SIGKILL process pid while it measures a trial, once `after` trials are complete: stopped first
    (SIGSTOP), and killed only if its trial is still RUNNING, else let go and tried again. Returns the
    number of the trial it left RUNNING."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]  # the run ended before the kill
        if complete_count(server, db) >= after and running_trial_of(server, db, pid) is not None:
            os.kill(pid, signal.SIGSTOP)
            number = running_trial_of(server, db, pid)
            if number is not None:
                os.kill(pid, signal.SIGKILL)
                return number
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("no trial of the process to kill: " + log.read_text()[-3000:])


def cli(spec: Path) -> list:
    return [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--no-progress"]


class StartGate:
    """Makes every process of a run start its trials at once (a worker takes seconds to start; alone, the
    driver would measure most of a small budget before the workers arrive). The study is created here and
    its row held (FOR NO KEY UPDATE): each process opens the study, then waits at its first trial (study.ask
    locks the row FOR UPDATE); the row is let go once `processes` wait, or after a minute."""

    def __init__(self, server: Server, db: str, processes: int):
        import psycopg

        optuna.create_study(study_name="t", storage=reader(server.url(db)), directions=["maximize", "minimize"])
        self.server, self.db, self.processes, self.waited = server, db, processes, 0
        self.conn = psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=PASSWORD, dbname=db)
        self.conn.execute("SELECT study_id FROM studies WHERE study_name = 't' FOR NO KEY UPDATE")
        self.thread = threading.Thread(target=self._open_when_all_wait, daemon=True)
        self.thread.start()

    def _open_when_all_wait(self):
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        deadline = time.time() + 60
        try:
            while time.time() < deadline:
                self.waited = self.server.sql("postgres", query, self.db)[0][0]
                if self.waited >= self.processes:
                    break
                time.sleep(0.05)
        finally:
            self.conn.rollback()
            self.conn.close()

    def join(self) -> int:
        self.thread.join(timeout=90)
        return self.waited


# ---------------------------------------------------------------- passwords never shown


def test_a_password_in_the_url_is_masked():
    mask = storage_mod.mask_url
    assert mask("postgresql+psycopg://ada:s3cr%40t@db:5432/x") == "postgresql+psycopg://ada:***@db:5432/x"
    assert mask("postgresql+psycopg://ada:p@ss@db/x") == "postgresql+psycopg://ada:***@db/x"  # unencoded '@'
    assert mask("postgresql+psycopg://db/x?user=a&password=pw&sslmode=require") == (
        "postgresql+psycopg://db/x?user=a&password=***&sslmode=require"
    )
    for same in ("postgresql://ada@db/x", "sqlite:////tmp/a@b:c/study.db", "sqlite:///C:/runs/study.db"):
        assert mask(same) == same
    spec = {"name": "t", "search": {"storage": "postgresql+psycopg://ada:pw@db/x", "workers": 3}}
    assert storage_mod.recorded_spec(spec) == {
        "name": "t",
        "search": {"storage": "postgresql+psycopg://ada:***@db/x", "workers": 3},
    }
    assert storage_mod.mask_text("failed for s3cr@t and s3cr%40t", "postgresql://a:s3cr%40t@h/d") == (
        "failed for *** and ***"
    )


def test_a_wrong_password_is_one_line_with_the_password_masked(pg, tmp_path):
    pg.new_database("wrong")
    cases = [
        (pg.url("wrong", password="Not-the-pw_93"), "password authentication failed", "Not-the-pw_93"),
        (pg.url("no_such_db"), 'database "no_such_db" does not exist', PASSWORD),
        (pg.url("wrong", port=free_port()), "check the host, port", PASSWORD),  # no server there
    ]
    for i, (url, needle, secret) in enumerate(cases):
        r = invoke(write_run_spec(tmp_path / str(i), storage=url, engine="optuna", trials=2))
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: search.storage: cannot open"), r.output
        assert needle in lines[0] and f"{USER}:***@" in lines[0], lines[0]
        assert secret not in r.output


# ---------------------------------------------------------------- --workers 3


def test_three_workers_count_each_trial_once_and_match_sqlite(pg, tmp_path, monkeypatch):
    url = pg.new_database("workers")
    spec = write_run_spec(
        tmp_path / "pg", limit=40, engine="optuna", sampler="random", trials=20, workers=3, storage=url, **ONE_THREAD
    )
    peak, done = [0], threading.Event()

    def count_connections():  # to the run's database: at most 2 per process (POOL_SIZE + MAX_OVERFLOW)
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'workers'"
        while not done.wait(0.05):
            peak[0] = max(peak[0], pg.sql("postgres", query)[0][0])

    poller = threading.Thread(target=count_connections)
    poller.start()
    gate = StartGate(pg, "workers", processes=3)
    try:
        r = invoke(spec)
    finally:
        done.set()
        poller.join()
    assert r.exit_code == 0, r.output
    assert gate.join() == 3  # all three processes started their trials at once
    assert PASSWORD not in r.output
    assert 3 <= peak[0] <= 1 + 3 * (storage_mod.POOL_SIZE + storage_mod.MAX_OVERFLOW), peak[0]  # 1: the gate
    trials = check_consistent(load(url), budget=20, workers=3)
    assert not [t.number for t in trials if t.state == WAITING]
    owners = {t.system_attrs[storage_mod.OWNER]["pid"] for t in trials if storage_mod.OWNER in t.system_attrs}
    assert len(owners) == 3, owners  # every process measured (asked trials carry their process)
    # the same networks measured into SQLite (every one, exhaustively), with a cache of its own
    monkeypatch.setenv("ADASEARCH_CACHE", str(tmp_path / "cache-sqlite"))
    assert invoke(write_run_spec(tmp_path / "sqlite", limit=40, engine="exhaustive")).exit_code == 0
    ref = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'sqlite' / 'out' / 'study.db'}")
    exact = {t.user_attrs["key"]: t.user_attrs["metrics"] for t in ref.get_trials(states=(COMPLETE,))}
    for t in trials:
        if t.state == COMPLETE:
            m, e = t.user_attrs["metrics"], exact[t.user_attrs["key"]]
            assert (m["accuracy"], m["gmacs"]) == (e["accuracy"], e["gmacs"]), t.number
    run_yaml = (tmp_path / "pg" / "out" / "run.yaml").read_text()
    assert f"{USER}:***@127.0.0.1" in run_yaml and PASSWORD not in run_yaml


# ---------------------------------------------------------------- kill -9, then resume


def test_a_worker_killed_mid_trial_leaves_nothing_running_and_its_config_is_measured_again(pg, tmp_path):
    url = pg.new_database("killworker")
    spec = write_run_spec(
        tmp_path, limit=40, engine="optuna", sampler="random", trials=10, workers=2, storage=url, **SLOW
    )
    log = tmp_path / "first-run.log"
    gate = StartGate(pg, "killworker", processes=2)
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(spec), stdout=out, stderr=subprocess.STDOUT)
        try:
            assert gate.join() == 2, log.read_text()[-3000:]
            (victim,) = spawned_workers(proc.pid)
            killed = kill_mid_trial(pg, "killworker", victim, proc, after=1, log=log)
            assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]  # the driver finishes
        finally:
            for pid in spawned_workers(proc.pid) if proc.poll() is None else []:
                os.kill(pid, signal.SIGKILL)  # a failed test leaves no worker behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    before = {t.number: (t.params, t.values) for t in load(url).get_trials(states=(COMPLETE,))}
    done = subprocess.run(cli(spec), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(url)
    trials = check_consistent(study, budget=10, workers=2)
    assert trials[killed].state == FAIL  # failed by the heartbeat, not left RUNNING
    retries = [t for t in trials if t.system_attrs.get(storage_mod.RETRY_OF) == killed]
    assert len(retries) == 1 and retries[0].state == COMPLETE  # its config measured again
    assert retries[0].params == trials[killed].params
    after = {t.number: (t.params, t.values) for t in trials if t.state == COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # nothing stored was changed


def test_the_driver_killed_mid_trial_resumes_with_nothing_lost(pg, tmp_path):
    url = pg.new_database("killdriver")
    spec = write_run_spec(tmp_path, limit=40, engine="optuna", sampler="random", trials=6, storage=url, **SLOW)
    log = tmp_path / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(spec), stdout=out, stderr=subprocess.STDOUT)
        try:
            killed = kill_mid_trial(pg, "killdriver", proc.pid, proc, after=2, log=log)
        finally:
            proc.kill()
            proc.wait()
    before = {t.number: (t.params, t.values) for t in load(url).get_trials(states=(COMPLETE,))}
    assert len(before) >= 2
    done = subprocess.run(cli(spec), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert PASSWORD not in done.stdout + done.stderr
    trials = check_consistent(load(url), budget=6, workers=1)
    assert trials[killed].state == FAIL  # failed at once: its process is gone
    retry = next(t for t in trials if t.system_attrs.get(storage_mod.RETRY_OF) == killed)
    assert retry.state == COMPLETE and retry.params == trials[killed].params  # measured again, first
    assert not [t.number for t in trials if t.state == WAITING]
    after = {t.number: (t.params, t.values) for t in trials if t.state == COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # nothing stored before was lost or changed


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_workers_stop_when_the_driver_is_killed_and_the_resume_leaves_nothing_waiting(pg, tmp_path):
    url = pg.new_database("orphans")
    spec = write_run_spec(tmp_path, limit=40, engine="optuna", sampler="random", trials=8, workers=2, storage=url,
                          **SLOW)  # fmt: skip
    log = tmp_path / "first-run.log"
    gate = StartGate(pg, "orphans", processes=2)
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(spec), stdout=out, stderr=subprocess.STDOUT)
        workers = []
        try:
            assert gate.join() == 2, log.read_text()[-3000:]
            workers = spawned_workers(proc.pid)
            assert len(workers) == 1
            kill_mid_trial(pg, "orphans", proc.pid, proc, after=1, log=log)  # the driver, mid-trial
            proc.wait()
            deadline = time.time() + 60
            while any(_running(w) for w in workers) and time.time() < deadline:
                time.sleep(0.2)
            # The kernel sent the orphaned worker SIGTERM (PR_SET_PDEATHSIG): it stopped by itself.
            assert not any(_running(w) for w in workers), "a worker outlived its run"
        finally:
            for pid in workers:
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = subprocess.run(cli(spec), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = check_consistent(load(url), budget=8, workers=2)
    # Configs re-queued for the trials the kill cut short were measured or, once the budget was met,
    # failed: no WAITING trial lingers.
    assert not [t.number for t in trials if t.state == WAITING]
    # Once more, with the budget met: nothing to measure, so no worker process is started at all.
    proc = subprocess.Popen(cli(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    while proc.poll() is None:
        seen += spawned_workers(proc.pid)
        time.sleep(0.05)
    assert proc.returncode == 0 and not seen, proc.stdout.read()[-3000:]


# ---------------------------------------------------------------- the heartbeat across machines


def test_a_trial_whose_heartbeat_stopped_is_failed_after_the_grace_period_and_requeued(pg, monkeypatch):
    """A process on another machine (no pid to check) is taken for dead once its heartbeat is older than
    the grace period; a process never fails its own trials."""
    url = pg.new_database("heartbeat")
    monkeypatch.setenv(storage_mod.HEARTBEAT_ENV, "1")
    monkeypatch.setattr(storage_mod, "GRACE_FACTOR", 1)
    far = storage_mod.open_storage(url)  # the other machine's process
    study = optuna.create_study(study_name="t", storage=far, directions=["maximize", "minimize"])
    trial = study.ask()
    x = trial.suggest_categorical("num_tokens", [1, 4, 32])
    far.set_trial_system_attr(trial._trial_id, storage_mod.OWNER, {"machine": "elsewhere", "pidns": "x", "pid": 1})
    assert storage_mod.fail_stale_trials(study) == []  # its own: never failed by itself
    near = storage_mod.open_storage(url)
    here = optuna.load_study(study_name="t", storage=near)
    assert storage_mod.fail_stale_trials(here) == []  # alive: its heartbeat is fresh
    far._stop_beating(trial._trial_id)  # the far process dies: its heartbeat stops
    time.sleep(2.5)
    assert storage_mod.fail_stale_trials(here) == [trial.number]
    trials = here.get_trials()
    assert [t.state for t in trials] == [FAIL, WAITING]
    assert trials[1].params == {"num_tokens": x} and trials[1].system_attrs[storage_mod.RETRY_OF] == trial.number
    retry = here.ask()  # the next proposal measures the config again
    assert retry.number == 1 and retry.suggest_categorical("num_tokens", [1, 4, 32]) == x
    here.tell(retry, [0.5, 1.0])
