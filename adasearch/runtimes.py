"""How a config's forward runs where it ships: the `hardware.runtime` of a spec.

    eager        the model's forward as it is (PyTorch eager)
    compile      torch.compile (inductor). A static config timed or served is compiled whole (fullgraph), once
                 per config and input shape. The parts of a forward (embed + read, one block, one readout) are
                 compiled once per shape and shared by every block and every config: the latency model times
                 them, and exit configs run them with the host's exit check between.
    cudagraph    CUDA only. A static config is captured whole once per input shape and replayed; an exit
                 config runs as captured parts (one capture per part and active batch size) with the host's
                 exit check between them.
    onnxruntime  A static config is exported to ONNX (torch.onnx, no graph built by hand) once per input
                 shape and run in an InferenceSession with the spec's threads; the latency model's parts
                 likewise. Exit configs are refused: their control flow is the host's.

Every timed figure of a run (trials, the latency model and its references, the finalists' re-timing) and
serving go through one Runtime, so the figures are those of the runtime that ships.
"""

from __future__ import annotations

import contextlib
import gc
import io
import time
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Optional

import torch

from adasearch.checks import RUNTIMES
from adasearch.errors import UserError

MAX_FORWARDS = 256  # built forwards a runtime keeps (compiled graphs, CUDA graphs, sessions hold memory)
# Compiled graphs per code object before dynamo gives up. Parts recompile per shape (18 block shapes x active
# batch sizes in the shipped spaces), so the default of 8 would be hit; past this limit it raises, never falls
# back to eager silently.
RECOMPILE_LIMIT = 1024
ONNX_OPSET = 17
# An ONNX Runtime session's memory over the bytes of the weights its config runs: it keeps the initializers and
# GEMM-packed copies of them: 2.0-2.35x on the IN-1K size, measured by hand (CPU, float32, RSS per session);
# 2.5 bounds it.
SESSION_WEIGHT_COPIES = 2.5
MEMORY_SHARE = 0.7  # of the memory free before building, what the forwards built for one timing may hold
GIB = 2**30
FFN_HIDDEN_SLICED = ("ffn.fc1.weight", "ffn.fc1.bias", "ffn.fc2.weight")  # a block's tensors a narrower FFN cuts


def free_bytes(device: torch.device) -> Optional[int]:
    """Memory free for new allocations on `device` (Linux's MemAvailable for the CPU), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def plan_weight_bytes(model, plan) -> int:
    """Bytes of the weights a plan runs: everything outside the blocks, and each executed block with its FFN
    cut to that block's hidden size (what an export keeps once it folds the Matryoshka slices)."""
    blocks = set(model.blocks.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p not in blocks)
    for i, hidden in enumerate(plan.hidden):
        block = model.blocks[i]
        full = block.ffn.fc1.weight.shape[0]
        for name, p in block.named_parameters():
            share = hidden / full if name in FFN_HIDDEN_SLICED else 1.0
            total += int(p.numel() * p.element_size() * share)
    return total


def exits(plan) -> bool:
    """Whether a plan can stop samples before its last block (its control flow is then the host's)."""
    return any(t is not None for t in plan.taus[:-1])


def check_runtime(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """One-line UserError (without the spec key; the caller adds it) when `name` cannot run on `device` here,
    or not in `dtype`."""
    if name not in RUNTIMES:
        raise UserError(f"{name!r} is not a runtime; allowed: {', '.join(RUNTIMES)}")
    if name == "cudagraph" and device.type != "cuda":
        raise UserError(f"cudagraph needs a CUDA device, not {device.type}; allowed there: eager, compile, onnxruntime")
    if name == "onnxruntime":
        try:
            import onnx  # noqa: F401
            import onnxruntime
        except ImportError as e:
            raise UserError(f"onnxruntime needs the [onnx] extra ({e.name or e} is missing): pip install '.[onnx]'")
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"onnxruntime runs on cpu or cuda, not {device.type}")
        if dtype != torch.float32:
            # The exported graph does not open: ORT has no bfloat16 Conv, and a float16 export mixes float and
            # float16 in LayerNormalization (both seen with onnxruntime 1.32 on CPU).
            raise UserError(
                f"onnxruntime runs float32 exports only, not {str(dtype).removeprefix('torch.')}; allowed: "
                f"dtype float32, or runtime eager or compile for {str(dtype).removeprefix('torch.')}"
            )
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise UserError("onnxruntime on cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available)")


class Runtime(ABC):
    """Runs plans (model.plan(...)) of one model on one device, as the target runs them.

    Contract:
    - `forward(plan, example)` -> a callable x -> logits (B, C) for inputs shaped like `example`. What it
      needs (a compiled graph, a CUDA graph, an ONNX session) is built on the first ask for that (plan,
      shape), run once on `example`, and kept; later asks return the same callable. Building is counted
      in `builds` (forwards), `part_builds` and `build_seconds`, so it never lands inside a timing;
      `progress_text()` says so while it happens.
    - `parts()` -> the object whose `embed_read(x, n)`, `run_block(i, latents, grans, hidden)` and
      `readout(latents)` run the parts of a forward as this runtime runs them (model.forward_plan takes it;
      the latency model times it).
    - A runtime that cannot run a plan raises a one-line UserError from `forward`; `static_only` says it
      refuses every plan that can exit.
    - The model is never changed; callables run under torch.inference_mode.
    """

    name = ""
    static_only = False

    def __init__(self, model, device: torch.device, threads: Optional[int] = None):
        self.model, self.device, self.threads = model, device, threads
        self.builds = 0
        self.part_builds = 0
        self.build_seconds = 0.0
        self._building_since: Optional[float] = None  # perf_counter at the start of the build under way
        self.most_groups = 1  # the most groups one timing was split into to fit in memory (memory_groups)
        self._forwards: OrderedDict = OrderedDict()

    def forward(self, plan, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (plan, tuple(example.shape), example.dtype)
        fn = self._forwards.get(key)
        if fn is not None:
            self._forwards.move_to_end(key)
            return fn
        if self.static_only and exits(plan):
            raise UserError(f"runtime {self.name} runs static configs only; this config has exit thresholds")
        self._make_room(plan)
        with self.building(), torch.inference_mode():
            fn = self._build(plan, example)
            fn(example)  # the first call builds (compiles, captures) where it is lazy
        self.builds += 1
        self._forwards[key] = fn
        if len(self._forwards) > MAX_FORWARDS:
            self._forwards.popitem(last=False)
        return fn

    def parts(self):
        return self.model

    def held_bytes(self, plan) -> int:
        """Memory a built forward of `plan` holds beyond the model's own, an upper estimate: 0 for runtimes
        whose forwards run on the model's weights."""
        return 0

    def release(self) -> None:
        """Forget every kept forward; its memory returns once the callers have dropped theirs too."""
        self._forwards.clear()
        gc.collect()

    def memory_groups(self, plans: list) -> list:
        """The indices of `plans` in consecutive groups whose forwards fit in memory together (MEMORY_SHARE of
        what is free; when they do not all fit, of what is free once the kept forwards are released): one
        group when they fit, or when forwards hold nothing of their own. A one-line UserError when a single
        plan does not fit."""
        held = [self.held_bytes(p) for p in plans]
        kept = {key[0] for key in self._forwards}
        new = sum(n for p, n in zip(plans, held) if p not in kept)
        free = free_bytes(self.device) if new else None
        if free is None or new <= MEMORY_SHARE * free:
            return [list(range(len(plans)))]
        self.release()
        free = free_bytes(self.device) or 0
        groups, size = [[]], 0
        for i, n in enumerate(held):
            self._refuse_beyond(n, free)
            if groups[-1] and size + n > MEMORY_SHARE * free:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += n
        self.most_groups = max(self.most_groups, len(groups))
        return groups

    def _make_room(self, plan) -> None:
        """Before building plan's forward: drop the least recently used kept forwards (a cache) while it does
        not fit in MEMORY_SHARE of the free memory; a one-line UserError when it still does not."""
        need = self.held_bytes(plan)
        free = free_bytes(self.device) if need else None
        while free is not None and need > MEMORY_SHARE * free and self._forwards:
            self._forwards.popitem(last=False)
            gc.collect()
            free = free_bytes(self.device)
        if free is not None:
            self._refuse_beyond(need, free)

    def _refuse_beyond(self, need: int, free: int) -> None:
        if need > MEMORY_SHARE * free:
            raise UserError(
                f"runtime {self.name}: a forward of this config would hold about {need / GIB:.1f} GiB and "
                f"{free / GIB:.1f} GiB is free on {self.device.type}; allowed: up to {MEMORY_SHARE:.0%} of what is "
                "free (free some, or use runtime eager or compile: they run on the model's own weights)"
            )

    @contextlib.contextmanager
    def building(self, part: bool = False):
        """Counts the time inside into build_seconds (and one part build, for part=True). A part built
        while a forward is being built is counted once, inside the forward's time."""
        if part:
            self.part_builds += 1
        if self._building_since is not None:
            yield
            return
        self._building_since = time.perf_counter()
        try:
            yield
        finally:
            self.build_seconds += time.perf_counter() - self._building_since
            self._building_since = None

    def stats(self) -> dict:
        """What building cost so far: for the summary and run.yaml."""
        return {"runtime": self.name, "builds": self.builds, "part_builds": self.part_builds,
                "build_s": round(self.build_seconds, 2), "timing_groups": self.most_groups}  # fmt: skip

    def progress_text(self) -> str:
        """What building has cost so far, a build under way included (the progress bar shows it); '' for eager,
        which builds nothing."""
        if self.name == "eager":
            return ""
        since = self._building_since
        seconds = self.build_seconds + (time.perf_counter() - since if since is not None else 0.0)
        return f"{self.name} builds: {self.builds} forwards, {self.part_builds} parts, {seconds:.0f} s"

    @abstractmethod
    def _build(self, plan, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable for this plan and input shape; `forward` times and keeps it."""


class EagerRuntime(Runtime):
    name = "eager"

    def _build(self, plan, example):
        model = self.model
        return lambda x: model.forward_plan(x, plan).logits


# ----------------------------------------------------------------------------- compile


def _embed_read(model, x, n: int):
    return model.read(model.embed(x), n)


def _block(block, latents, cos, sin, mask, hidden):
    return block(latents, (cos, sin), mask, hidden)


def _readout(model, latents):
    return model.readout(latents)


def _whole(model, plan, x):
    return model.forward_plan(x, plan).logits


def _own_code(fn, tag: str):
    """fn with a code object of its own. Dynamo keeps compiled graphs and their guards per code object: one
    per config keeps each config's cache to one entry instead of every call checking every config's guards."""
    import types

    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _null(t):
    return t + 1


class CompiledParts:
    """The parts of a forward compiled with inductor once per shape. Each shape of a part gets a code object
    of its own (_own_code), so a call checks the guards of one compiled graph, not of every shape's: a
    block's graph takes the block module as an input, so every block of one shape shares it."""

    def __init__(self, model, building: Callable):
        self.model = model
        self._building = building
        self._compiled: dict = {}

    def _call(self, key, fn, *args):
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled(*args)
        with self._building(part=True):
            compiled = torch.compile(_own_code(fn, f"part{len(self._compiled)}"), fullgraph=True, dynamic=False)
            out = compiled(*args)
        self._compiled[key] = compiled
        return out

    def embed_read(self, x, n: int):
        return self._call(("embed_read", n, x.shape), _embed_read, self.model, x, n)

    def run_block(self, i: int, latents, grans, hidden=None):
        m = self.model
        hidden = None if hidden == m.cfg.ffn_hidden else hidden
        mask = m.mask(grans)
        key = ("block", latents.shape, hidden, None if mask is None else tuple(grans))
        return self._call(key, _block, m.blocks[i], latents, *m.rope(latents.shape[1]), mask, hidden)

    def readout(self, latents):
        return self._call(("readout", latents.shape), _readout, self.model, latents)

    def null(self, t):
        """One call of a compiled graph that computes next to nothing: what a call itself costs."""
        return self._call(("null", t.shape), _null, t)


class CompileRuntime(Runtime):
    name = "compile"

    def __init__(self, model, device, threads=None):
        super().__init__(model, device, threads)
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.fail_on_recompile_limit_hit = True
        self.whole_compiles = 0
        self._parts = CompiledParts(model, self.building)

    def parts(self):
        return self._parts

    def _build(self, plan, example):
        model = self.model
        if exits(plan):  # compiled parts, the host's exit checks between them
            parts = self._parts
            return lambda x: model.forward_plan(x, plan, parts).logits
        model.forward_plan(example, plan)  # tables warm before tracing: the graph only reads them
        self.whole_compiles += 1
        whole = torch.compile(_own_code(_whole, str(self.whole_compiles)), fullgraph=True, dynamic=False)
        return lambda x: whole(model, plan, x)

    def stats(self) -> dict:
        return {**super().stats(), "whole_compiles": self.whole_compiles}


# ----------------------------------------------------------------------------- CUDA graphs


def _capture(fn, inputs: list):
    """(graph, static inputs, static output) of fn(*inputs) captured in a CUDA graph, after a warm-up on a
    side stream as capture requires (lazy init, cuBLAS workspaces, the model's tables)."""
    statics = [t.clone() for t in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*statics)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*statics)
    return graph, statics, out


class CapturedParts:
    """The parts of a forward, each captured once per (part, block, shape) and replayed. An output is
    overwritten by the next replay of its own graph, so a caller uses it before running that part again
    (model.forward_plan does: each block's output feeds the next block, a readout's logits are copied out)."""

    def __init__(self, model, building: Callable):
        self.model = model
        self._building = building
        self._graphs: dict = {}

    def _replay(self, key, fn, *inputs):
        entry = self._graphs.get(key)
        if entry is None:
            with self._building(part=True):
                entry = self._graphs[key] = _capture(fn, list(inputs))
        graph, statics, out = entry
        for static, value in zip(statics, inputs):
            static.copy_(value)
        graph.replay()
        return out

    def embed_read(self, x, n: int):
        m = self.model
        return self._replay(("embed_read", n, x.shape), lambda x: m.read(m.embed(x), n), x)

    def run_block(self, i: int, latents, grans, hidden=None):
        m = self.model
        key = ("block", i, latents.shape, tuple(grans), hidden)
        return self._replay(key, lambda z: m.run_block(i, z, grans, hidden), latents)

    def readout(self, latents):
        return self._replay(("readout", latents.shape), self.model.readout, latents)

    def null(self, t):
        """One replay of a graph that computes next to nothing: what a replay itself costs."""
        return self._replay(("null", t.shape), _null, t)


class CudaGraphRuntime(Runtime):
    name = "cudagraph"

    def __init__(self, model, device, threads=None):
        super().__init__(model, device, threads)
        self._parts = CapturedParts(model, self.building)

    def parts(self):
        return self._parts

    def _build(self, plan, example):
        model = self.model
        if exits(plan):
            parts = self._parts
            return lambda x: model.forward_plan(x, plan, parts).logits
        graph, (static_x,), static_logits = _capture(lambda x: model.forward_plan(x, plan).logits, [example])

        def replay(x):
            static_x.copy_(x)
            graph.replay()
            return static_logits

        return replay


# ----------------------------------------------------------------------------- ONNX Runtime


class PlanModule(torch.nn.Module):
    """model.forward_plan(x, plan).logits as a module: what is exported for one static config."""

    def __init__(self, model, plan):
        super().__init__()
        self.model, self.plan = model, plan

    def forward(self, x):
        return self.model.forward_plan(x, self.plan).logits


class _PartModule(torch.nn.Module):
    """fn(x), a part of model's forward, as a module that holds the model: the exporter then takes the
    model's weights as the graph's initializers rather than as constants captured from a closure."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(x)


def export_onnx(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX bytes of module(example), with a dynamic batch axis (input `x`, output `y`).
    torch.onnx's TorchScript exporter: it exports a config in under a second where the dynamo exporter
    takes seconds, and the forward has no data-dependent control flow for a static config."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the plan's Python ints: they are constants
        torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                          opset_version=ONNX_OPSET, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})  # fmt: skip
    return buffer.getvalue()


def ort_session(onnx_bytes: bytes, device: torch.device, threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default, taking the CPU from whatever is timed or served next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(onnx_bytes, options, providers=providers)


def ort_callable(session, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (a torch tensor on device) -> output as a torch tensor. On CPU the arrays share memory with the
    tensors; on CUDA, I/O binding keeps the data on the device."""
    if device.type != "cuda":
        return lambda x: torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
    import numpy as np

    def run(x):
        x = x.contiguous()
        binding = session.io_binding()
        elem = {torch.float32: np.float32, torch.float16: np.float16}.get(x.dtype, np.float32)
        binding.bind_input("x", "cuda", device.index or 0, elem, list(x.shape), x.data_ptr())
        binding.bind_output("y", "cuda", device.index or 0)
        session.run_with_iobinding(binding)
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

    return run


class OnnxParts:
    """The parts of a forward, each exported and run in its own session, once per shape (the latency model's
    parts under onnxruntime; a block is exported as block 0 of its shape, as the latency model times it)."""

    def __init__(self, runtime: OnnxRuntime):
        self.runtime = runtime
        self._runs: dict = {}

    def _run(self, key, fn, x):
        run = self._runs.get(key)
        if run is None:
            with self.runtime.building(part=True), torch.inference_mode(False), torch.no_grad():
                data = export_onnx(_PartModule(self.runtime.model, fn), x.clone())
                run = self._runs[key] = ort_callable(ort_session(data, x.device, self.runtime.threads), x.device)
        return run(x)

    def embed_read(self, x, n: int):
        m = self.runtime.model
        return self._run(("embed_read", n, x.shape), lambda x: m.read(m.embed(x), n), x)

    def run_block(self, i: int, latents, grans, hidden=None):
        m = self.runtime.model
        return self._run(("block", i, latents.shape, tuple(grans), hidden),
                         lambda z: m.run_block(i, z, grans, hidden), latents)  # fmt: skip

    def readout(self, latents):
        return self._run(("readout", latents.shape), self.runtime.model.readout, latents)

    def null(self, t):
        """One run of a session that computes next to nothing: what a session's run itself costs."""
        return self._run(("null", t.shape), _null, t)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    static_only = True

    def __init__(self, model, device, threads=None):
        super().__init__(model, device, threads)
        self._parts = OnnxParts(self)

    def parts(self):
        return self._parts

    def held_bytes(self, plan) -> int:
        return int(SESSION_WEIGHT_COPIES * plan_weight_bytes(self.model, plan))

    def _build(self, plan, example):
        # Export traces with autograd off but outside inference mode (inference tensors cannot be traced).
        with torch.inference_mode(False), torch.no_grad():
            data = export_onnx(PlanModule(self.model, plan), example.clone())
        return ort_callable(ort_session(data, self.device, self.threads), self.device)


RUNTIME_CLASSES = {cls.name: cls for cls in (EagerRuntime, CompileRuntime, CudaGraphRuntime, OnnxRuntime)}


def make_runtime(name: str, model, device: torch.device, threads: Optional[int] = None) -> Runtime:
    """The runtime `name` for model on device; a one-line UserError when it cannot run there."""
    check_runtime(name, device, next(model.parameters()).dtype)
    return RUNTIME_CLASSES[name](model, device, threads)
