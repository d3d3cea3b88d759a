"""Wall-clock latency of a forward, per batch, with a warm-up and an adaptive number of repetitions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adasearch.errors import UserError
from adasearch.measure.environment import environment, resolve_device
from adasearch.measure.interleaved import typical_ms


@dataclass
class LatencyResult:
    p50_ms: float  # percentiles and mean of the time for ONE batch
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second = batch_size * reps / total timed seconds
    reps: int
    batch_size: int
    warmup: int
    env: dict  # environment(...) at measurement time


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call so that queued kernels are finished; CPU ops are synchronous already."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _check(batches: Sequence[torch.Tensor], min_reps: int, max_reps: int, budget_s: float, warmup: int) -> int:
    """Validate the arguments; return the batch size."""
    if not batches:
        raise UserError("latency needs at least one batch to time")
    sizes = {b.shape[0] for b in batches}
    if len(sizes) != 1:
        # Per-batch percentiles only mean something at one batch size.
        raise UserError(
            f"latency batches must all have one batch size; got sizes {sorted(sizes)} (drop the last, partial batch)"
        )
    if min_reps < 1 or max_reps < min_reps:
        raise UserError(
            f"repetitions min_reps={min_reps}, max_reps={max_reps} are not allowed: need 1 <= min_reps <= max_reps"
        )
    if budget_s < 0 or warmup < 0:
        raise UserError(f"budget_s={budget_s} and warmup={warmup} are not allowed: both must be >= 0")
    return sizes.pop()


def time_forward(
    fn: Callable[[torch.Tensor], object],
    batches: Sequence[torch.Tensor],
    *,
    device: torch.device,
    min_reps: int = 10,
    max_reps: int = 1000,
    budget_s: float = 1.0,
    warmup: int = 3,
) -> LatencyResult:
    """Time fn(batch), one batch per repetition, cycling through `batches` in order.

    First `warmup` untimed calls (caches, allocator, lazy init), starting again from batches[0].
    Then repetitions until at least `min_reps` are done AND either `budget_s` seconds of wall time
    have passed since the first timed call or `max_reps` are done. So the budget bounds the time
    only once min_reps are in, and max_reps caps fast functions.

    Each repetition is timed alone with time.perf_counter, the device synchronized before the start
    and before the stop, so asynchronous GPU work is inside its own window. Percentiles use
    numpy.percentile's default (linear) method. Batches must already be on `device`.
    """
    batch_size = _check(batches, min_reps, max_reps, budget_s, warmup)
    sync = _synchronizer(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup):
            fn(batches[i % len(batches)])
        sync()
        start = time.perf_counter()
        while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
            batch = batches[len(times) % len(batches)]
            sync()
            t0 = time.perf_counter()
            fn(batch)
            sync()
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    p50, (p90, p99) = typical_ms(ms, len(batches)), np.percentile(ms, [90, 99])
    total = sum(times)  # 0 only for a no-op fn under a coarse clock
    return LatencyResult(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        throughput=batch_size * len(times) / total if total else float("inf"),
        reps=len(times),
        batch_size=batch_size,
        warmup=warmup,
        env=environment(str(device), None),
    )


def time_config(
    model, config, batches: Sequence[torch.Tensor], *, device, dtype: torch.dtype = torch.float32, **kw
) -> LatencyResult:
    """Latency of model.run(x, config) over real data batches, so early exits happen as in use.

    The model must already be on `device` in `dtype` (this does not move it: that would change the
    caller's model in place). The batches are moved here, once, outside the timed region.
    `kw` goes to time_forward (min_reps, max_reps, budget_s, warmup).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    param = next(model.parameters())
    same_device = param.device.type == device.type and device.index in (None, param.device.index)
    if not same_device or param.dtype != dtype:
        raise ValueError(
            f"model is on {param.device} in {param.dtype} but timing was asked for {device} in "
            f"{dtype}; move it first with model.to({str(device)!r}, {dtype})"
        )
    on_device = [b.to(device=device, dtype=dtype) for b in batches]
    return time_forward(lambda x: model.run(x, config), on_device, device=device, **kw)
