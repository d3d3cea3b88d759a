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

# Sizes a user gives, bounded before any work starts (the reason with each):
MAX_THREADS = 1024  # hardware.threads, --threads: the most hardware threads one machine offers today (2x512)
# search.trials: each trial is a row of the study, and Optuna's samplers read every stored trial on each
# ask (TPE refits on all of them), so a study of more than this would take days to sample alone.
MAX_TRIALS = 100_000
# Configs of a space that is enumerated (engine: exhaustive and model, a profile): each is built, made
# canonical and held in memory, about 10 s and 100 MB per 100k; past this, sample (engine: optuna).
ENUMERABLE_LIMIT = 100_000
MAX_QUIET_WAIT_S = 3600.0  # search.quiet_wait, --quiet-wait: a machine busy for longer is busy; the run says so
MAX_TEXT = 4096  # characters of any text in a run spec: PATH_MAX on Linux; a path, URL or name needs no more
# name: it names the default results folder (255 bytes per file name on most file systems) and the
# Optuna study (512 characters in its schema), and it is written into run.yaml and every deployment file.
MAX_NAME = 200


def is_int(v) -> bool:
    """An integer, not a boolean."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float, not a boolean."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
