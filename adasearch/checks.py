"""Types and value domains shared by every validator of user input (config.json, knobs, specs, flags).

YAML and JSON booleans are Python ints, and NaN passes every range check by failing it: both are
refused here, once.
"""

from __future__ import annotations

import math

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # hardware.dtype, --dtype; torch dtypes of the same names
ENGINES = ("auto", "exhaustive", "model", "optuna", "ray")  # search.engine, --engine
RUNTIMES = ("eager", "cudagraph", "compile", "onnxruntime")  # hardware.runtime, --runtime (adasearch/runtimes.py)
SAMPLERS = ("auto", "nsga2", "tpe", "gp", "random", "bruteforce")  # search.sampler, --sampler


def is_int(v) -> bool:
    """An integer, not a boolean."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float, not a boolean."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
