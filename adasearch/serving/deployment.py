"""Serve the configs a run found: load once, then pick a config per request by latency budget.

This module is what an inference service imports, so it needs only torch, yaml and the package's
model and config code: no optuna, ray, pandas, matplotlib or fvcore (a test checks it).

Latency budgets are compared with each config's measured latency_p90_ms (latency_p50_ms where a run
did not record p90): a config chosen for a budget then meets it on 9 requests in 10 on the measured
hardware, rather than on only half of them. The figures are per batch of the run's hardware.batch_size.
The model runs on the device and in the dtype the run measured (hardware.device and hardware.dtype,
unless device= or dtype= say otherwise): a run timed on CUDA refuses to load on a machine without CUDA
rather than quietly serving on CPU with latencies that are no longer true. Threads are the process's
own, so Deployment leaves them alone; `adasearch serve` sets the run's hardware.threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch

from adasearch.config import DeploymentConfig, read_document
from adasearch.errors import CheckpointError, InputError, UserError
from adasearch.measure.environment import resolve_device, resolve_dtype  # torch only: no heavy imports
from adasearch.metrics import CERTIFIABLE, COMPUTE, P50, P90, budget_latency, tie_break
from adasearch.model.adaperceiver import AdaPerceiver, ClassificationOutput
from adasearch.model.loading import load_model, looks_like_hub_id
from adasearch.run_folder import RUN, RunFolder

TOP_K = 5


# ---------------------------------------------------------------- serving


class Entry(NamedTuple):
    name: str
    config: DeploymentConfig
    metrics: dict
    guarantee: Optional[dict] = None  # a certified bound: {metric, max, confidence, samples, method}

    def covers(self, max_drop: float) -> bool:
        """Certified to lose at most max_drop top-1 against the full config. A disagreement bound covers
        it too: a config cannot lose more accuracy than the fraction of answers it changes."""
        g = self.guarantee
        return bool(g) and g.get("metric") in CERTIFIABLE and float(g.get("max", 1.0)) <= max_drop


@dataclass(frozen=True)
class Prediction:
    logits: torch.Tensor  # (B, C)
    probs: tuple  # top-5 softmax probabilities as (values, indices), each (B, 5); also .values, .indices
    classes: torch.Tensor  # (B,) argmax class
    exit_depth: torch.Tensor  # (B,) blocks each sample ran
    config: DeploymentConfig
    config_name: str
    latency_p50_ms: Optional[float]  # as the run measured it for this config, not the time of this call
    latency_p90_ms: Optional[float]
    within_budget: bool  # True when no budget (and no max_drop) was given, or the chosen config meets them
    guarantee: Optional[dict] = None  # the chosen config's certified bound, if it has one


def _rank(e: Entry) -> tuple:
    """Most accurate first; between equally accurate configs, the faster (the tie-break --pick uses)."""
    return tie_break(e.metrics)


def _resolve_device(device: Optional[str], hardware: dict, where: Path) -> torch.device:
    if device is not None:
        return resolve_device(device)
    recorded = hardware.get("device") or "cpu"
    try:
        return resolve_device(recorded)
    except UserError as e:
        raise UserError(
            f"{where} was measured on device {recorded!r}: {e}. Pass device=... (--device) to "
            f"serve elsewhere; its measured latencies then describe the other device"
        )


def _resolve_model(model, recorded: Optional[str], where: Path, device: torch.device, dtype: str) -> AdaPerceiver:
    torch_dtype = resolve_dtype(dtype)
    if isinstance(model, AdaPerceiver):
        net = model
    elif model is not None:
        net = load_model(model)
    elif recorded is None:
        raise UserError(f"{where} records no model; pass model=... (a folder, a weights file or an AdaPerceiver)")
    elif recorded == "demo" or Path(recorded).expanduser().exists():
        net = load_model(recorded)
    elif looks_like_hub_id(recorded):  # owner/name: a hub id, or a relative folder missing from here
        try:
            net = load_model(recorded)
        except CheckpointError as e:
            raise UserError(
                f"{where} records model {recorded!r}: no such folder from here, and as a hub id: "
                f"{e}; pass model=... (a folder, a weights file or an AdaPerceiver)"
            )
    else:
        # run.yaml keeps the spec's model as written, relative to wherever the run was launched.
        raise UserError(
            f"{where} records model {recorded!r}, which does not exist from here; pass "
            f"model=... (a folder, a weights file, a hub id or an AdaPerceiver)"
        )
    return net.to(device, torch_dtype).eval()


class Deployment:
    """A model, loaded once, plus the configs it may run under: a run's Pareto configs or one exported config."""

    def __init__(
        self,
        model: AdaPerceiver,
        entries: list,
        hardware: Optional[dict] = None,
        name: Optional[str] = None,
        latency_model: Optional[dict] = None,
        runtime: Optional[str] = None,
    ):
        for e in entries:
            e.config.validate(model.cfg)  # a config of another model fails here, naming the knob
        self.model = model
        self._entries = list(entries)
        self.hardware = dict(hardware or {})  # what the measured figures assume: device, threads, batch_size, dtype
        self.name = name or "adasearch"  # the run's name: the model name of the Open Inference Protocol
        self.latency_model = latency_model  # the run's latency_model.json document, if it has one
        from adasearch.runtimes import make_runtime

        # The runtime the figures were measured under (adasearch/runtimes.py), unless the caller says otherwise.
        self.runtime_name = runtime or self.hardware.get("runtime") or "eager"
        param = next(model.parameters())
        self._runtime = make_runtime(self.runtime_name, model, param.device, self.hardware.get("threads"))

    @classmethod
    def load(
        cls,
        source: Union[str, Path],
        model=None,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        runtime: Optional[str] = None,
    ) -> Deployment:
        """A results folder (every Pareto config) or one deployment YAML/JSON (that config).

        model: an AdaPerceiver, a source for load_model, or None for the model the run recorded.
        device: cpu | cuda | cuda:N | mps | auto; None runs on the device the run measured (cpu if unrecorded).
        dtype: float32 | bfloat16 | float16; None runs in the dtype the run measured.
        runtime: eager | compile | cudagraph | onnxruntime; None runs the runtime the run measured.
        """
        source = Path(source)
        if source.is_dir():
            folder = RunFolder(source)
            pareto = folder.read_pareto()
            entries = [
                Entry(
                    row["name"].removesuffix(".yaml"),
                    DeploymentConfig.from_dict(row["config"], str(source)),
                    row["metrics"],
                    row.get("guarantee") if isinstance(row.get("guarantee"), dict) else None,
                )
                for row in pareto["pareto"]
            ]
            if not entries:
                raise UserError(f"{source}: the Pareto front is empty (no config met the run's constraints)")
            run = folder.read_run()
            spec = run["spec"]
            latency_model, _ = folder.read_latency_model()  # unreadable or absent: figures and a scaling rule
            recorded = spec.get("model") if model is None else None
            hardware = dict(spec.get("hardware") or {})
            measured_on = (run.get("environment") or {}).get("device")
            if measured_on:  # the spec may say "auto"; this is where the figures were taken
                hardware["device"] = measured_on
            dtype = dtype or hardware.get("dtype", "float32")
            where = folder / RUN
            net = _resolve_model(model, recorded, where, _resolve_device(device, hardware, where), dtype)
            return cls(net, entries, hardware, spec.get("name") or source.name, latency_model, runtime)
        if not source.is_file():
            raise UserError(f"{source}: no such results folder or deployment YAML")
        config = DeploymentConfig.load(source)
        # An exported file wraps the knobs with the run's measurements and model; a bare one is knobs only.
        doc = read_document(source)
        wrapped = isinstance(doc, dict) and isinstance(doc.get("config"), dict)
        metrics = (doc.get("metrics") or {}) if wrapped else {}
        recorded = doc.get("model") if wrapped else None
        hardware = (doc.get("hardware") or {}) if wrapped else {}
        dtype = dtype or hardware.get("dtype") or "float32"
        net = _resolve_model(model, recorded, source, _resolve_device(device, hardware, source), dtype)
        guarantee = doc.get("guarantee") if wrapped and isinstance(doc.get("guarantee"), dict) else None
        return cls(net, [Entry(source.stem, config, metrics, guarantee)], hardware, source.stem, runtime=runtime)

    @property
    def configs(self) -> list:
        """(name, config, metrics) entries, in pareto.json's order."""
        return list(self._entries)

    def choose(self, budget_ms: Optional[float] = None, max_drop: Optional[float] = None) -> tuple:
        """(entry, within_budget). No budget: the most accurate config. A budget: the most accurate config
        whose measured latency fits it, else the fastest config (within_budget False).

        max_drop: only configs certified to lose at most this much top-1 against the full config, the
        cheapest of them (fewest MACs) that fits the budget; none certified: the most accurate config,
        with within_budget False."""
        if max_drop is not None:
            return self._choose_certified(budget_ms, max_drop)
        if budget_ms is None:
            return max(self._entries, key=_rank), True
        timed = [e for e in self._entries if budget_latency(e.metrics) is not None]
        if not timed:
            raise UserError(
                "no config of this deployment has a measured latency, so a budget cannot pick one "
                "(search with a latency objective or constraint)"
            )
        fits = [e for e in timed if budget_latency(e.metrics) <= budget_ms]
        if fits:
            return max(fits, key=_rank), True
        return min(timed, key=lambda e: budget_latency(e.metrics)), False

    def _choose_certified(self, budget_ms: Optional[float], max_drop: float) -> tuple:
        covered = [e for e in self._entries if e.covers(max_drop)]
        if budget_ms is not None:
            covered = [e for e in covered if (budget_latency(e.metrics) or math.inf) <= budget_ms]
        if not covered:
            return max(self._entries, key=_rank), False
        return min(covered, key=lambda e: e.metrics.get(COMPUTE, math.inf)), True

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """x on the model's device, floating point in the model's dtype."""
        param = next(self.model.parameters())
        return x.to(param.device, dtype=param.dtype if x.is_floating_point() else None)

    def forward(self, config: DeploymentConfig, batch: torch.Tensor) -> ClassificationOutput:
        """The one forward that serving runs, for a batch (B, C, H, W) under one config: logits (B, C) and
        each sample's exit depth. Every batch the server forms goes through here, under the runtime the
        figures were measured on; its forward for a (config, batch size) is built on first use and kept.
        A runtime other than eager reports no per-sample exit depth: an exit config's is given as its depth."""
        with torch.inference_mode():
            if self.runtime_name == "eager":
                return self.model.run(batch, config)  # raises InputError on a shape the model cannot take
            plan = self.model.plan(**config.to_dict())
            logits = self._runtime.forward(plan, batch)(batch).clone()  # a CUDA graph's output is reused
            return ClassificationOutput(logits, torch.full((len(batch),), plan.depth, device=logits.device))

    def predict(
        self, x: torch.Tensor, budget_ms: Optional[float] = None, max_drop: Optional[float] = None
    ) -> Prediction:
        """Classify x, (B, C, H, W) or one image (C, H, W) (then B = 1), under the config chosen for
        budget_ms and max_drop (see choose)."""
        entry, within = self.choose(budget_ms, max_drop)
        if isinstance(x, torch.Tensor):  # anything else is for the model to reject with its own message
            x = x.unsqueeze(0) if x.ndim == 3 else x
            if x.ndim == 4 and x.shape[0] == 0:
                raise InputError("predict got an empty batch (B = 0); give at least one image")
            x = self.as_input(x)
        out = self.forward(entry.config, x)
        probs = out.logits.softmax(-1)
        return Prediction(
            logits=out.logits,
            probs=probs.topk(min(TOP_K, probs.shape[-1]), dim=-1),
            classes=out.logits.argmax(-1),
            exit_depth=out.exit_depth,
            config=entry.config,
            config_name=entry.name,
            latency_p50_ms=entry.metrics.get(P50),
            latency_p90_ms=entry.metrics.get(P90),
            within_budget=within,
            guarantee=entry.guarantee,
        )
