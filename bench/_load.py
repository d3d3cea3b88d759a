"""One core kept busy for a bench's busy rows: a bounded `yes > /dev/null`, started and stopped by PID."""

import subprocess
from contextlib import contextmanager


@contextmanager
def one_core_busy(busy: bool, timeout_s: float):
    """Yields check(when): raises SystemExit when the load ended before `when` (the table would mix a quiet
    machine into a busy row). timeout_s bounds a load that a killed bench could not stop; otherwise the load
    is stopped on leaving, by SIGTERM, which timeout passes on to yes (a SIGKILL would leave yes running).
    busy False: no load, and check does nothing."""
    hog = subprocess.Popen(["sh", "-c", f"exec timeout {timeout_s:.0f} yes > /dev/null"]) if busy else None

    def check(when: str) -> None:
        if hog is not None and hog.poll() is not None:
            raise SystemExit(f"the busy load (yes) ended before {when}: the table would mix states")

    try:
        yield check
    finally:
        if hog is not None:
            hog.terminate()
            hog.wait(timeout=10)
