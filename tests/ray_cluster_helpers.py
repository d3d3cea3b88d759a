"""A two-node Ray cluster on this one machine, for tests/test_ray_cluster.py and bench/cluster.py.

Ray refuses a multi-node cluster on loopback, so each node runs in a network namespace of its own,
joined by a veth pair with addresses of the cluster's own (10.231.X.1 and 10.231.X.2, X chosen per
run): no traffic leaves those namespaces. The head (no target resource) is in one; the worker node
(the target: `--resources '{"target_cpu": 1}'`) is in the other, under `unshare --mount` with a
private tmpfs over a folder (the run's output folder), so that folder on the worker node is its own
disk, as on a second machine. The driver runs in the head's namespace (`Cluster.head_run`).

Each node is a `ray start --block` in the foreground: it keeps the worker's mount namespace alive,
and SIGTERM to it stops that node's Ray processes. Clean-up never uses `ray stop` (it stops every Ray
on the machine, by name): it stops the processes inside the two namespaces, by pid (`ip netns pids`),
then deletes the namespaces (which deletes the veth pair) and the cluster's temp folder; also on
failure and on Ctrl-C.

Needs root, `ip netns` and `unshare`; `unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

VENV_BIN = Path(sys.executable).parent  # this interpreter's venv: `ray` and `python` for the nodes and the driver
RAY = str(VENV_BIN / "ray")
PORT = 6379  # the head's GCS port; free in any case: the head's namespace is the cluster's own
RESOURCE = "target_cpu"
# Every Ray process of the cluster: no token auth (it would read or write ~/.ray), no usage stats.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Not inherited from this process: a local run of the ray engine sets the first to 0 (loopback only,
# which refuses a second node); the second would point the nodes and the driver at another Ray.
NOT_INHERITED = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")


def ray_env(**extra) -> dict:
    """This process's environment for a process of the cluster (a node, the driver)."""
    return {**{k: v for k, v in os.environ.items() if k not in NOT_INHERITED}, **RAY_ENV, **extra}


START_TIMEOUT_S = 60
_serial = itertools.count()


def unavailable() -> Optional[str]:
    """Why a namespace cluster cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, mount)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` on PATH"
    if not Path(RAY).is_file():
        return f"no `ray` next to {sys.executable}"
    probe = f"asprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Cluster:
    head_ns: str
    worker_ns: str
    head_ip: str
    worker_ip: str
    address: str  # head_ip:PORT, what `--ray-address` takes
    head_id: str  # Ray node ids
    worker_id: str
    worker_pid: int  # the worker node's `ray start`: its namespaces are the worker node's
    resource: str
    temp: Path  # node temp folders, logs, the nodes' caches

    def head_run(self, args: list, timeout: float = 300, **env) -> subprocess.CompletedProcess:
        """Run a command in the head's network namespace (where the driver runs), stdout and stderr together."""
        return subprocess.run(
            ["ip", "netns", "exec", self.head_ns, *args],
            env=ray_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def on_worker(self, args: list) -> str:
        """Run a command in the worker node's network and mount namespaces (its private disk); its stdout."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.worker_pid), "-m", "-n", *args], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise RuntimeError(f"on the worker node: {args}: {done.stderr.strip()}")
        return done.stdout

    def logs(self) -> str:
        """The tail of both nodes' `ray start` output, for a failure message."""
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in sorted(self.temp.glob("*.log")))


def _ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _wait_for(log: Path, proc: subprocess.Popen, text: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"`ray start` did not say {text!r} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


_NODES = """
import json, logging, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.WARNING)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    if len(nodes) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps(nodes))
"""


@contextlib.contextmanager
def two_node_cluster(private_dir: Path, resource: str = RESOURCE):
    """Start the cluster, yield a Cluster, stop it and remove every trace (namespaces, veth, processes,
    temp folder). `private_dir` must exist: the worker node gets its own empty tmpfs over it."""
    private_dir = Path(private_dir).resolve()
    if not private_dir.is_dir():
        raise ValueError(f"{private_dir}: the worker node's private folder must exist")
    _remove_stale()
    tag = f"as{os.getpid()}x{next(_serial)}"  # unique per process and cluster; interface names <= 15 bytes
    head_ns, worker_ns = f"{tag}h", f"{tag}w"
    subnet = f"10.231.{os.getpid() % 250 + 1}"
    head_ip, worker_ip = f"{subnet}.1", f"{subnet}.2"
    # Short: Ray's unix socket paths (temp/h/session_<date>_<pid>/sockets/plasma_store) must fit 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    procs: list = []
    try:
        for ns in (head_ns, worker_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        _ip("link", "set", f"{tag}a", "netns", head_ns)
        _ip("link", "set", f"{tag}b", "netns", worker_ns)
        for ns, dev, ip in ((head_ns, f"{tag}a", head_ip), (worker_ns, f"{tag}b", worker_ip)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

        deadline = time.monotonic() + START_TIMEOUT_S
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        head_cmd = [RAY, "start", "--head", "--node-ip-address", head_ip, "--port", str(PORT)]
        head_cmd += ["--temp-dir", str(temp / "h"), "--include-dashboard", "false", *common]
        head_log = temp / "head.log"
        head = _popen(["ip", "netns", "exec", head_ns, *head_cmd], head_log, ADASEARCH_CACHE=str(temp / "hc"))
        procs.append(head)
        _wait_for(head_log, head, "Ray runtime started", deadline)

        worker_cmd = [RAY, "start", "--address", f"{head_ip}:{PORT}", "--node-ip-address", worker_ip]
        worker_cmd += ["--temp-dir", str(temp / "w"), "--resources", json.dumps({resource: 1}), *common]
        # `exec`: the shell becomes `ray start`, so the mount namespace lives exactly as long as the node.
        script = f"mount -t tmpfs -o size=64m tmpfs {_quote(private_dir)} && exec {' '.join(map(_quote, worker_cmd))}"
        worker_log = temp / "worker.log"
        worker = _popen(
            ["ip", "netns", "exec", worker_ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            worker_log,
            ADASEARCH_CACHE=str(temp / "wc"),
        )
        procs.append(worker)
        _wait_for(worker_log, worker, "Ray runtime started", deadline)

        cluster = Cluster(
            head_ns, worker_ns, head_ip, worker_ip, f"{head_ip}:{PORT}", "", "", worker.pid, resource, temp
        )
        left = max(5.0, deadline - time.monotonic())
        found = cluster.head_run([sys.executable, "-c", _NODES, cluster.address, str(left)], timeout=left + 30)
        nodes = json.loads(found.stdout.strip().splitlines()[-1]) if found.returncode == 0 else {}
        if set(nodes) != {head_ip, worker_ip}:
            raise RuntimeError(
                f"the cluster did not come up with both nodes ({found.stdout[-2000:]})\n{cluster.logs()}"
            )
        cluster.head_id, cluster.worker_id = nodes[head_ip], nodes[worker_ip]
        yield cluster
    finally:
        _tear_down(procs, (worker_ns, head_ns), tag)
        shutil.rmtree(temp, ignore_errors=True)


def _quote(s) -> str:
    import shlex

    return shlex.quote(str(s))


def _popen(args: list, log: Path, **env) -> subprocess.Popen:
    with open(log, "w") as out:
        # Its own session: a Ctrl-C of the test reaches the test, whose clean-up then stops the node.
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=ray_env(**env), start_new_session=True)


def _ns_pids(ns: str) -> list:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def _signal(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _remove_stale() -> None:
    """Namespaces this helper made in a process that is gone (killed before its clean-up ran): stop what
    runs in them and delete them. Only names of this helper's form, and only when their process is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    for name in {line.split()[0] for line in listed if line.strip()}:
        m = re.fullmatch(r"as(\d+)x\d+[hw]", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _tear_down([], (name,), name[:-1])


def _tear_down(procs: list, namespaces: tuple, tag: str) -> None:
    """Stop the nodes (SIGTERM to each `ray start --block`, which stops its node), then whatever still
    runs in the two namespaces, by pid, then delete the namespaces and any veth left in this one."""
    for p in reversed(procs):  # the worker node first, then the head
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        pids = [pid for ns in namespaces for pid in _ns_pids(ns)]
        if not pids:
            break
        _signal(pids, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_ns_pids(ns) for ns in namespaces):
            time.sleep(0.2)
    left = {ns: _ns_pids(ns) for ns in namespaces}
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for dev in (f"{tag}a", f"{tag}b"):  # only if it never reached its namespace
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
    if any(left.values()):  # never leave a namespace's processes running unnamed
        raise RuntimeError(f"processes survived the cluster's clean-up: {left}")
