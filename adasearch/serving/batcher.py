"""Dynamic batching: a bounded queue, one forward at a time for a batch of requests, each its own answer.

Requests wait in a queue bounded by max_queue samples. The batcher (one asyncio task) takes the request at
the head, waits up to max_delay for more of the same input shape, up to max_batch samples, asks the
Scheduler which config and which of them run, and runs that one forward on a worker thread (one: parallel
forwards only fight over the same cores) while the event loop keeps admitting. max_batch 1 is one forward
per request, as before batching.

Refusals are Shed errors (HTTP 503 with Retry-After): the queue is full, the request cannot make its
deadline (at admission, or once its turn comes), the server is warming up or draining. Once admitted, a
request is always answered: drain() stops admitting and returns once the queue is empty.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import torch

from adasearch.serving.deployment import TOP_K, Deployment
from adasearch.serving.prometheus import ServingMetrics
from adasearch.serving.scheduler import Pending, Scheduler


class Shed(Exception):
    """A request refused with 503: retry after `retry_after` seconds."""

    def __init__(self, reason: str, message: str, retry_after: int = 1):
        super().__init__(message)
        self.reason, self.message, self.retry_after = reason, message, retry_after


@dataclass
class Answer:
    """One request's share of a batch."""

    logits: torch.Tensor  # (n, C), on the CPU
    exit_depth: torch.Tensor  # (n,)
    top_values: torch.Tensor  # (n, k) softmax probabilities of the top classes
    top_indices: torch.Tensor  # (n, k)
    entry: object  # the deployment Entry that served it
    batch_size: int  # samples in the forward it rode in
    queue_ms: float  # from arrival to the start of its forward
    within_deadline: bool  # predicted, when its batch was planned
    deadline_met: bool  # measured: answered by its deadline (True without one)


@dataclass(eq=False)
class _Item:
    x: torch.Tensor  # (n, C, H, W)
    pending: Pending
    arrival: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self,
        dep: Deployment,
        scheduler: Scheduler,
        metrics: ServingMetrics,
        max_batch: int = 1,
        max_delay_ms: float = 0.0,
        max_queue: int = 1024,
    ):
        self.dep, self.scheduler, self.metrics = dep, scheduler, metrics
        self.clock = scheduler.clock
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay_ms / 1e3, max_queue
        self.queue: deque = deque()
        self.queued_samples = 0
        self.busy_until = 0.0  # clock time the running forward is predicted to end
        self.ready = False  # warmed up
        self.draining = False
        self.admitted = self.answered = 0  # requests queued, and those given their answer (or their error)
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="adasearch-forward")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the batch loop, then warm up on the worker thread; ready once every config has run."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())
        await asyncio.get_running_loop().run_in_executor(self._worker, self.warm_up)
        self.ready = True

    def warm_up(self) -> None:
        """Each config once at each batch size it may get: 1..max_batch, and the run's batch size for the
        scaling of its figures; then the predictor's warm_reps timed forwards, whose times it records."""
        cfg = self.dep.model.cfg
        predictor = self.scheduler.predictor
        sizes = sorted({*range(1, self.max_batch + 1), getattr(predictor, "batch_size", 1)})
        x = self.dep.as_input(torch.zeros(max(sizes), cfg.in_channels, cfg.img_size, cfg.img_size))
        reps = getattr(predictor, "warm_reps", 0)
        for entry in self.scheduler.entries:
            for b in sizes:
                self.dep.forward(entry.config, x[:b])  # the warm-up proper
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    self.dep.forward(entry.config, x[:b])
                    times.append((time.perf_counter() - t0) * 1e3)
                if times:
                    predictor.record_warm_up(entry.name, b, times)

    def drain(self) -> None:
        """Stop admitting; what is queued is still answered."""
        self.draining = True
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Drain, wait for the queue to empty, then end the loop."""
        self.drain()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)

    # ------------------------------------------------------------ admission

    async def submit(self, x: torch.Tensor, budget_ms: Optional[float], max_drop: Optional[float]) -> Answer:
        """Queue x (n, C, H, W); its answer, or Shed (503), or the model's UserError for a shape it refuses.
        Raises NoCertifiedConfig for a max_drop no config is certified for."""
        now = self.clock()
        if self.draining:
            self._shed("draining", "the server is shutting down; send to another replica")
        if not self.ready:
            self._shed("warming_up", "the server is warming up")
        n = int(x.shape[0])
        pending = Pending(n, now + budget_ms / 1e3 if budget_ms is not None else math.inf, max_drop)
        self.scheduler.eligible(max_drop)  # raises NoCertifiedConfig before anything is queued
        if self.queued_samples + n > self.max_queue and self.queue:
            self._shed("queue_full", f"the queue holds {self.queued_samples} samples (--max-queue {self.max_queue})")
        why = self.scheduler.admit(pending, self.queued_samples, self.busy_until)
        if why:
            self._shed("admission", f"no config can answer within budget_ms={budget_ms:g}: {why}")
        item = _Item(x, pending, now, asyncio.get_running_loop().create_future())
        self.queue.append(item)
        self.queued_samples += n
        self.admitted += 1
        self._wake.set()
        return await item.future

    def _shed(self, reason: str, message: str):
        self.metrics.shed.labels(reason).inc()
        raise Shed(reason, message)

    # ------------------------------------------------------------ the loop

    def _same_shape(self) -> list:
        shape = self.queue[0].x.shape[1:]
        return [it for it in self.queue if it.x.shape[1:] == shape]

    async def _loop(self) -> None:
        while True:
            if not self.queue:
                if self.draining:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            fill_until = self.queue[0].arrival + self.max_delay
            while not self.draining and self.clock() < fill_until:
                if sum(it.pending.samples for it in self._same_shape()) >= self.max_batch:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, fill_until - self.clock()))
                except asyncio.TimeoutError:
                    break
            candidates = self._same_shape()
            try:
                await self._run_one(candidates)
            except Exception as e:  # a bug must fail these requests (500), not leave every later one hanging
                queued = {id(it) for it in self.queue}
                self._remove([it for it in candidates if id(it) in queued])
                for it in candidates:
                    if not it.future.done():
                        self._settle(it, error=e)

    def _remove(self, items: list) -> None:
        gone = {id(it) for it in items}
        self.queue = deque(it for it in self.queue if id(it) not in gone)
        self.queued_samples -= sum(it.pending.samples for it in items)

    async def _run_one(self, candidates: list) -> None:
        plan = self.scheduler.plan([it.pending for it in candidates])
        late = [candidates[i] for i in plan.late]
        batch = [candidates[i] for i in plan.take]
        self._remove(late + batch)
        for it in late:
            self.metrics.shed.labels("late").inc()
            self._settle(it, error=Shed("late", "no config can answer by the request's deadline any more"))
        if not batch:
            return
        start = self.clock()
        self.busy_until = start + plan.predicted_ms / 1e3
        x = torch.cat([it.x for it in batch]) if len(batch) > 1 else batch[0].x
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._worker, self._forward, plan.entry, x)
        except Exception as e:  # the model refused the inputs: every request of the batch hears why
            for it in batch:
                self._settle(it, error=e)
            return
        finally:
            self.busy_until = self.clock()  # idle now, however long the prediction said
        logits, depth, values, indices = out
        end = self.busy_until
        self.metrics.batch_size.observe(int(x.shape[0]))
        row = 0
        for it in batch:
            n = it.pending.samples
            met = end <= it.pending.deadline
            self.metrics.queue_time.observe(start - it.arrival)
            self.metrics.latency.observe(end - it.arrival)
            self.metrics.served.labels(plan.entry.name).inc()
            if not met:
                self.metrics.deadline_misses.inc()
            answer = Answer(
                logits[row : row + n],
                depth[row : row + n],
                values[row : row + n],
                indices[row : row + n],
                plan.entry,
                int(x.shape[0]),
                1e3 * (start - it.arrival),
                plan.within_deadline,
                met,
            )
            row += n
            self._settle(it, answer)

    def _settle(self, item: _Item, answer: Optional[Answer] = None, error: Optional[Exception] = None) -> None:
        self.answered += 1
        if item.future.done():  # a client that went away leaves a cancelled future
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(answer)

    def _forward(self, entry, x: torch.Tensor) -> tuple:
        out = self.dep.forward(entry.config, self.dep.as_input(x))
        logits = out.logits.float()
        probs = logits.softmax(-1)
        values, indices = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
        return logits.cpu(), out.exit_depth.cpu(), values.cpu(), indices.cpu()
