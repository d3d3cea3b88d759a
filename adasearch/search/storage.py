"""The run's Optuna storage: opening it, and what a shared database server needs.

- SQLite (the default, `sqlite:///<output>/study.db`): a long busy timeout, and a retry while another
  process creates the same schema.
- PostgreSQL (`postgresql+psycopg://user:password@host/db`, `pip install "adasearch[postgres]"`):
  * a small connection pool per process (POOL_SIZE + MAX_OVERFLOW = 2: the loop's connection and the
    heartbeat's), so `--workers N` holds at most 2N connections of the server's max_connections
    (Optuna's default pool allows 15 per process: "too many clients", optuna#1347);
  * Optuna's heartbeat: every RUNNING trial of a process is stamped every HEARTBEAT_INTERVAL_S by a
    thread of that process. Our loop asks and tells (study.ask/tell), where Optuna starts no
    heartbeat thread and fails no stale trial (only study.optimize does): HeartbeatStorage does both.
    A trial whose process died (kill -9, a lost machine) is failed by the next process that opens the
    study or asks for a trial: at once when its owner was a process of this machine that no longer
    exists, else once its heartbeat is older than GRACE_FACTOR heartbeats. Its config is queued
    again (a WAITING trial with its params, at most MAX_RETRY times), so the next proposal of any
    process measures it. A process never fails its own trials: a live process that lost its
    heartbeat for a while would otherwise find its trial finished under it ("trial already finished",
    optuna#5582).
- A password in the URL is never shown: messages, logs and run.yaml show `mask_url(url)` (user:***@host).

ADASEARCH_HEARTBEAT_S overrides the heartbeat interval (whole seconds; the grace period scales with it).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings
from typing import Optional
from urllib.parse import unquote

from adasearch.errors import UserError

HEARTBEAT_ENV = "ADASEARCH_HEARTBEAT_S"
HEARTBEAT_INTERVAL_S = 10  # a stamp per RUNNING trial and process every 10 s: negligible load
GRACE_FACTOR = 6  # stale after 6 missed stamps (60 s): a busy but live process is never taken for dead
MAX_RETRY = 2  # a config whose process died 3 times is left failed (it may be what kills it)
POOL_SIZE, MAX_OVERFLOW = 1, 1  # connections per process: the loop's and the heartbeat thread's
CONNECT_TIMEOUT_S = 10
OWNER = "adasearch:owner"  # system attr of a RUNNING trial: {machine, pidns, pid} of the process measuring it
RETRY_OF = "failed_trial"  # system attrs of a re-queued config, as Optuna's RetryHeartbeatStaleTrialCallback names them
RETRY_HISTORY = "retry_history"

_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|pass|sslpassword)=)([^&#]*)", re.IGNORECASE)
_POSTGRES = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://", re.IGNORECASE)


def _userinfo(url: str):
    """(start, end) of the password in scheme://user:PASSWORD@host..., or None. The password runs to
    the last '@' (an unencoded '@' in it is a common slip: SQLAlchemy would read the rest as the host)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon or "/" in user or not password:
        return None
    start = len(scheme) + len(sep) + len(user) + 1
    return start, start + len(password)


def mask_url(url: str) -> str:
    """The URL with its password (user:PASSWORD@ and ?password=...) replaced by ***."""
    if not url:
        return url
    span = _userinfo(url)
    if span:
        url = url[: span[0]] + "***" + url[span[1] :]
    return _QUERY_SECRET.sub(lambda m: m.group(1) + "***", url)


def recorded_url(url: Optional[str]) -> Optional[str]:
    """What run.yaml, reports and logs may show of a storage URL (None stays None)."""
    return None if url is None else mask_url(url)


def recorded_spec(spec_dict: dict) -> dict:
    """A spec's YAML dict (RunSpec.to_yaml_dict) with search.storage masked: what run.yaml records."""
    search = spec_dict.get("search")
    if not isinstance(search, dict) or not search.get("storage"):
        return spec_dict
    return {**spec_dict, "search": {**search, "storage": recorded_url(search["storage"])}}


def _secrets(url: str) -> list:
    """The password of a URL as written, decoded, and its pieces around an unencoded '@' (which
    SQLAlchemy would put into the host name of its messages), longest first."""
    span = _userinfo(url)
    found = [url[span[0] : span[1]]] if span else []
    found += [m.group(2) for m in _QUERY_SECRET.finditer(url) if m.group(2)]
    out = {s for f in found for s in (f, unquote(f), *(p for p in f.split("@") if len(p) >= 4))}
    return sorted((s for s in out if s), key=len, reverse=True)


def mask_text(text: str, url: str) -> str:
    """Any text (an error message) with the URL's password replaced by ***."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def is_postgres(url: str) -> bool:
    return bool(_POSTGRES.match(url or ""))


def heartbeat_settings() -> tuple:
    """(interval, grace period) in whole seconds; ADASEARCH_HEARTBEAT_S sets the interval."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    interval = HEARTBEAT_INTERVAL_S
    if raw:
        try:
            interval = int(raw)
        except ValueError:
            interval = 0
        if interval < 1:
            raise UserError(f"{HEARTBEAT_ENV}={raw!r}: allowed: a whole number of seconds >= 1")
    return interval, GRACE_FACTOR * interval


def open_storage(url: str, workers: int = 1, attempts: int = 5):
    """The RDBStorage for a storage URL; any failure to open it is one UserError with the URL masked."""
    try:
        return _retry_schema_race(lambda: _build(url), attempts)
    except UserError:
        raise
    except Exception as e:
        raise _open_error(url, e, workers)


def _build(url: str):
    import optuna

    if not is_postgres(url):
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    interval, grace = heartbeat_settings()
    # study.ask warns on every call when the storage has a heartbeat: that is how we use it (ask/tell).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    engine_kwargs = {
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "pool_pre_ping": True,  # a connection the server closed (idle timeout, restart) is replaced, not failed
        "pool_timeout": 60,
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
    }
    storage_class = _heartbeat_storage_class()
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9; stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storage_class(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRY),
        )


def _retry_schema_race(build, attempts: int):
    """Retried while another process (a worker, or a reader of a run in progress) creates the same
    schema: SQLAlchemy's create-if-missing races, and the loser sees an IntegrityError or "already
    exists" (SQLite: OperationalError; PostgreSQL: ProgrammingError) although the storage is fine a
    moment later."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return build()
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            racing = isinstance(e, IntegrityError) or "already exists" in str(e)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _open_error(url: str, error: Exception, workers: int) -> UserError:
    shown = mask_url(url)
    text = str(error).strip()
    if text.startswith("(") and ") " in text:  # SQLAlchemy's "(psycopg.OperationalError) ..."
        text = text.split(") ", 1)[1]
    first = " ".join(mask_text((text.splitlines() or [""])[0], url).split())[:200]
    what = f"{type(error).__name__}: {first}" if first else type(error).__name__
    if isinstance(error, ImportError) or "No module named" in text or "Can't load plugin" in text:
        hint = 'for PostgreSQL: pip install "adasearch[postgres]" and a postgresql+psycopg://user:password@host/db URL'
    elif "too many clients" in text or "remaining connection slots" in text:
        hint = (
            f"the server has no free connection: each process holds at most {POOL_SIZE + MAX_OVERFLOW} "
            f"({workers} workers: {workers * (POOL_SIZE + MAX_OVERFLOW)}): lower --workers or raise its max_connections"
        )
    elif "password authentication failed" in text:
        hint = "check the user and password in the URL"
    elif is_postgres(url):
        hint = "check the host, port and database in the URL, and that the server is running"
    else:
        hint = "allowed: an Optuna storage URL such as sqlite:///path/study.db or postgresql+psycopg://user:password@host/db"
    return UserError(f"search.storage: cannot open {shown!r} ({what}); {hint}")


def fail_stale_trials(study) -> list:
    """Fail the study's trials whose process died (and queue their configs again); numbers of the
    trials failed. Does nothing on a storage without heartbeat (SQLite)."""
    backend = getattr(study._storage, "_backend", study._storage)
    if not hasattr(backend, "fail_stale"):
        return []
    return backend.fail_stale(study._study_id)


def fail_leftover_retries(study) -> list:
    """Fail the re-queued configs (WAITING retries) still waiting when a search has met its budget: no
    process will pop them, and a WAITING trial left behind looks like work in flight. Numbers failed."""
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    failed = []
    for trial in waiting:
        if RETRY_OF in trial.system_attrs:
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except (RuntimeError, ValueError):  # popped by a process meanwhile: it is being measured
                continue
            failed.append(trial.number)
    return failed


class RetryStaleTrial:
    """Queues the config of a trial failed for a stale heartbeat again: a WAITING trial with its
    params, which the next study.ask of any process pops; not past max_retry re-queues of one config.
    Unlike Optuna's RetryHeartbeatStaleTrialCallback it copies no user attrs (the dead trial's figures
    may be half-written) and no constraints. Usable as Optuna's heartbeat_stale_trial_callback."""

    def __init__(self, max_retry: int):
        self.max_retry = max_retry

    def template(self, trial):
        import optuna

        history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
        if len(history) > self.max_retry or not trial.params:
            return None
        return optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={RETRY_OF: trial.system_attrs.get(RETRY_OF, trial.number), RETRY_HISTORY: history},
        )

    def __call__(self, study, trial) -> None:
        template = self.template(trial)
        if template is not None:
            study.add_trial(template)


def _machine() -> Optional[str]:
    """This boot of this machine, without naming it: the kernel's random boot id (no hostname is
    recorded anywhere; see measure/environment.py). None where there is none (then nothing counts as
    the same machine, and only the heartbeat's grace period fails a dead process's trial)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_exists(pid: int) -> bool:
    """False only when pid is surely gone (a zombie counts as gone: kill -9 makes one until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_CLASS = None


def _heartbeat_storage_class():
    """HeartbeatStorage, defined on first use so that importing this module does not import Optuna."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import optuna
    import sqlalchemy
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    Attr = models.TrialSystemAttributeModel

    class HeartbeatStorage(optuna.storages.RDBStorage):
        """An RDBStorage that stamps the heartbeat of this process's RUNNING trials (study.ask/tell
        starts no heartbeat thread of Optuna's) and fails stale trials before creating one (as
        study.optimize does), see the module's docstring."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_heartbeat()

        def _init_heartbeat(self):
            self._lock = threading.Lock()
            self._beating: set = set()  # trial ids of this process's RUNNING trials
            self._thread: Optional[threading.Thread] = None
            self._owner = {"machine": _machine(), "pidns": _pid_namespace(), "pid": os.getpid()}

        def __getstate__(self):
            state = super().__getstate__()
            for key in ("_lock", "_beating", "_thread", "_owner"):
                state.pop(key, None)
            return state

        def __setstate__(self, state):
            super().__setstate__(state)
            self._init_heartbeat()

        # ---- this process's trials

        def _create_new_trial(self, study_id, template_trial=None):
            if template_trial is None:  # study.ask: like study.optimize, fail stale trials first
                try:
                    self.fail_stale(study_id)
                except Exception:  # a check that fails now is made again at the next trial
                    pass
            frozen = super()._create_new_trial(study_id, template_trial)
            if frozen.state == TrialState.RUNNING:
                self._start_beating(frozen._trial_id)
            return frozen

        def set_trial_state_values(self, trial_id, state, values=None):
            try:
                changed = super().set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                self._stop_beating(trial_id)
                raise
            if state == TrialState.RUNNING and changed:  # a WAITING trial popped by study.ask
                self._start_beating(trial_id)
            elif state.is_finished():
                self._stop_beating(trial_id)
            return changed

        def _start_beating(self, trial_id):
            self.record_heartbeat(trial_id)  # at once: a trial with no heartbeat is never taken for stale
            self.set_trial_system_attr(trial_id, OWNER, self._owner)
            with self._lock:
                self._beating.add(trial_id)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._beat, name="adasearch-heartbeat", daemon=True)
                    self._thread.start()

        def _stop_beating(self, trial_id):
            with self._lock:
                self._beating.discard(trial_id)

        def _beat(self):
            """Stamps every RUNNING trial of this process each interval; ends when there is none."""
            while True:
                time.sleep(self.heartbeat_interval)
                with self._lock:
                    ids = sorted(self._beating)
                    if not ids:
                        self._thread = None
                        return
                for trial_id in ids:
                    try:
                        self.record_heartbeat(trial_id)
                    except Exception:  # the server is away for a moment: the next stamp may reach it
                        pass

        # ---- other processes' trials

        def fail_stale(self, study_id) -> list:
            """Fail the RUNNING trials of other processes that died, queue their configs again and
            return their numbers. Dead: a process of this machine that no longer exists, or a
            heartbeat older than the grace period. A RUNNING trial with no heartbeat at all (its
            process died between creating it and stamping it) gets a stamp now, so that it is stale
            one grace period later. One query when nothing is stale."""
            with self._lock:
                mine = set(self._beating)
            session = self.scoped_session()
            try:
                now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)  # as Optuna compares
                rows = (
                    session.query(models.TrialModel.trial_id, models.TrialHeartbeatModel.heartbeat, Attr.value_json)
                    .outerjoin(
                        models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id
                    )
                    .outerjoin(Attr, sqlalchemy.and_(Attr.trial_id == models.TrialModel.trial_id, Attr.key == OWNER))
                    .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                    .all()
                )
            finally:
                session.close()
            stale = []
            for trial_id, heartbeat, owner in rows:
                if trial_id in mine:
                    continue
                if heartbeat is None:
                    self.record_heartbeat(trial_id)  # a concurrent first stamp is ignored (integrity error)
                elif self._owner_died(owner) or (now - heartbeat).total_seconds() > self.grace_period:
                    stale.append(trial_id)
            failed = []
            retry = self.heartbeat_stale_trial_callback
            for trial_id in stale:
                try:
                    if not self.set_trial_state_values(trial_id, state=TrialState.FAIL):
                        continue
                except UpdateFinishedTrialError:  # finished meanwhile, or failed by another process
                    continue
                trial = self.get_trial(trial_id)
                failed.append(trial.number)
                template = retry.template(trial) if isinstance(retry, RetryStaleTrial) else None
                if template is not None:
                    self.create_new_trial(study_id, template_trial=template)
            return failed

        def _owner_died(self, owner) -> bool:
            try:
                owner = json.loads(owner) if isinstance(owner, str) else owner
            except ValueError:
                return False
            if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
                return False
            me = self._owner
            same_machine = bool(me["machine"] and owner.get("machine") == me["machine"] and me["pidns"]
                                and owner.get("pidns") == me["pidns"])  # fmt: skip
            return bool(same_machine) and owner["pid"] != me["pid"] and not _process_exists(owner["pid"])

    _CLASS = HeartbeatStorage
    return _CLASS
