"""Click options that several commands share, defined once (as pip-tools' scripts/options.py does),
so `--device`, `--dtype`, `--runtime` and `--threads` accept the same values everywhere.

Each is a function of its default, since `measure` has concrete defaults where `serve` defaults to
what the run measured."""

from __future__ import annotations

from typing import Optional

import click

from adasearch.checks import DTYPE_NAMES, MAX_THREADS, RUNTIMES

DEVICES_HELP = "cpu, cuda, cuda:N, mps or auto"


def _default(default: Optional[str], when_none: str) -> str:
    return "" if default is not None else f" (default: {when_none})"


def device_option(default: Optional[str], when_none: str = ""):
    return click.option(
        "--device",
        default=default,
        show_default=default is not None,
        help=f"{DEVICES_HELP}{_default(default, when_none)}.",
    )


def dtype_option(default: Optional[str], when_none: str = ""):
    return click.option(
        "--dtype",
        type=click.Choice(DTYPE_NAMES),
        default=default,
        show_default=default is not None,
        help=f"Compute dtype{_default(default, when_none)}.",
    )


def threads_option(help_default: str):
    return click.option(
        "--threads", type=click.IntRange(1, MAX_THREADS), default=None, help=f"CPU threads (default: {help_default})."
    )


def runtime_option(default: Optional[str], when_none: str = ""):
    return click.option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        default=default,
        show_default=default is not None,
        help=f"How forwards run: eager, cudagraph (CUDA), compile (torch.compile) or onnxruntime ([onnx] extra)"
        f"{_default(default, when_none)}.",
    )
