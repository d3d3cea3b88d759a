"""Where a measurement ran: the device, the thread count and the software, recorded with every timing.

No hostname or user name is recorded, so result files can be shared as they are.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Optional

import torch

from adasearch.checks import DTYPE_NAMES
from adasearch.errors import UserError

# The one map from the spec's dtype names to torch dtypes (measuring and serving both use it).
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_dtype(name: str) -> torch.dtype:
    """A dtype name as a torch.dtype, or a one-line UserError listing the allowed names."""
    if name not in DTYPES:
        raise UserError(f"dtype {name!r} is not allowed: one of {list(DTYPES)}")
    return DTYPES[name]


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    return torch.backends.mps.is_available()


def allowed_devices() -> list[str]:
    """Device names that resolve_device accepts on this machine."""
    names = ["auto", "cpu"]
    count = _cuda_count()
    if count:
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(device: str) -> torch.device:
    """ "cpu", "cuda", "cuda:N", "mps" or "auto" (cuda when available, else cpu) as a torch.device.

    A device this machine lacks, or an unknown name, raises a one-line UserError listing the allowed ones.
    """
    allowed = ", ".join(allowed_devices())
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if _cuda_count() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if cuda:
        count = _cuda_count()
        if not count:
            raise UserError(
                f"device {device!r} is not available on this machine "
                f"(torch.cuda.is_available() is False); allowed here: {allowed}"
            )
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            raise UserError(
                f"device {device!r} is not available: this machine has {count} CUDA device(s); allowed here: {allowed}"
            )
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise UserError(
                f"device {device!r} is not available on this machine "
                f"(torch.backends.mps.is_available() is False); allowed here: {allowed}"
            )
        return torch.device("mps")
    raise UserError(f"device {device!r} is not known; allowed here: {allowed}")


def set_threads(threads: Optional[int]) -> None:
    """torch.set_num_threads(threads) when given; None keeps torch's default."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(
            f"threads={threads!r} is not allowed: a positive integer, or leave it out for "
            f"torch's default ({torch.get_num_threads()} here)"
        )
    torch.set_num_threads(threads)


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo on Linux), else what platform knows, else "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass  # not Linux: fall back to platform
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({cpu_name()})"
    return cpu_name()


def environment(device: str, threads: Optional[int]) -> dict:
    """JSON-ready facts about the machine a measurement runs on.

    `threads` is what the user asked for (None: torch's default); "threads" is what torch uses now.
    """
    dev = resolve_device(device)
    env = {
        "device": str(dev),
        "device_name": device_name(dev),
        "threads": torch.get_num_threads(),
        "threads_requested": threads,
        "cpu_count": os.cpu_count(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "os": platform.system(),
        "platform": platform.platform(),  # OS, kernel release and architecture; no hostname
    }
    if dev.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env
