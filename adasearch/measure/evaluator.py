"""The Evaluator: accuracy engine + cost model + latency timer -> one Measurement per config."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.measure.accuracy import AccuracyEngine
from adasearch.measure.closed_form_macs import MACS_CONVENTION, CostModel
from adasearch.measure.environment import environment, resolve_device, resolve_dtype, set_threads
from adasearch.measure.latency import _synchronizer, time_forward
from adasearch.measure.memory import peak_memory_mb
from adasearch.metrics import MEMORY_METRIC
from adasearch.metrics import SEARCH_NAMES as metric_names

ACCURACY_BATCH = 256  # accuracy does not depend on the batch size; a big batch is just faster
LATENCY_BATCHES = 8  # distinct real batches cycled while timing, so early exits are realistic
REFERENCE_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)  # of MACs: the static configs a latency model is calibrated on
EXIT_REFERENCE_QUANTILES = (0.0, 0.5, 1.0)  # of the exit configs' expected MACs: the exit curve's points


@dataclass(frozen=True)
class Hardware:
    device: str = "cpu"
    threads: Optional[int] = None
    batch_size: int = 1
    dtype: str = "float32"
    runtime: str = "eager"  # adasearch/runtimes.py: how every timed forward runs


# What part timings and timed figures depend on: the target. A run's and a latency model's fingerprints use it.
TARGET_KEYS = ("device", "device_name", "torch", "cuda", "threads", "batch_size", "dtype", "runtime")


@dataclass
class Measurement:
    accuracy: float  # top-1 on the data
    top5: float
    macs: float  # expected per image under the measured exit distribution
    flops: float  # 2 x macs
    mean_exit_depth: float
    exit_fractions: list
    latency_p50_ms: Optional[float] = None  # per batch of hardware.batch_size
    latency_p90_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    throughput: Optional[float] = None  # samples per second
    memory_mb: Optional[float] = None
    samples: int = 0
    macs_convention: str = MACS_CONVENTION
    memory_method: Optional[str] = None
    env: dict = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def metrics(self) -> dict:
        """Flat numeric metrics, one per name of the metric registry: what constraints and objectives
        refer to (None where not measured)."""
        return {name: getattr(self, name) for name in metric_names}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(gmacs=self.gmacs, gflops=self.gflops)
        return d


class Evaluator:
    """Measures configs of one model on one dataset and one hardware profile."""

    def __init__(
        self,
        model,
        data,
        hardware: Hardware = Hardware(),
        *,
        cache_dir=None,
        latency_budget_s: float = 0.5,
        progress=None,
    ):
        if hardware.batch_size < 1:
            raise UserError(f"batch_size={hardware.batch_size} is not allowed: an integer >= 1")
        self.hardware = hardware
        self.device = resolve_device(hardware.device)
        set_threads(hardware.threads)
        self.dtype = resolve_dtype(hardware.dtype)
        self.model = model.to(self.device, self.dtype).eval()
        from adasearch.runtimes import make_runtime

        self.runtime = make_runtime(hardware.runtime, self.model, self.device, hardware.threads)
        self.data = data
        self.latency_budget_s = latency_budget_s
        self.accuracy = AccuracyEngine(
            self.model, data, batch_size=ACCURACY_BATCH, cache_dir=cache_dir, progress=progress
        )
        self.cost = CostModel(self.model)
        self.heldout = None  # the held-out part, when build_evaluator split the data
        self._heldout_engine = None
        self._latency_batches = None

    def heldout_accuracy(self) -> AccuracyEngine:
        """An accuracy engine over the held-out part (its own cache entries: other samples)."""
        if self.heldout is None:
            raise UserError("this run has no held-out part (data.holdout is 0)")
        if self._heldout_engine is None:
            self._heldout_engine = AccuracyEngine(
                self.model, self.heldout, batch_size=ACCURACY_BATCH, cache_dir=self.accuracy.cache_dir
            )
        return self._heldout_engine

    def latency_batches(self) -> list:
        if self._latency_batches is None:
            batches = []
            for x, _ in self.data.batches(self.hardware.batch_size):
                if len(x) == self.hardware.batch_size:
                    batches.append(x.to(self.device, self.dtype))
                if len(batches) == LATENCY_BATCHES:
                    break
            if not batches:
                raise UserError(
                    f"batch_size={self.hardware.batch_size} is larger than the data "
                    f"({len(self.data)} samples); lower hardware.batch_size"
                )
            self._latency_batches = batches
        return self._latency_batches

    def environment(self) -> dict:
        return {
            **environment(self.hardware.device, self.hardware.threads),
            "dtype": self.hardware.dtype,
            "batch_size": self.hardware.batch_size,
            "runtime": self.hardware.runtime,
        }

    def measure_accuracy_and_cost(self, configs: Iterable[DeploymentConfig]) -> dict:
        configs = list(configs)
        acc = self.accuracy.measure(configs)
        out = {}
        for c in configs:
            a = acc[c]
            macs = self.cost.config_macs(c, a.exit_fractions)
            out[c] = Measurement(
                accuracy=a.top1,
                top5=a.top5,
                macs=macs,
                flops=2 * macs,
                mean_exit_depth=a.mean_exit_depth,
                exit_fractions=a.exit_fractions,
                samples=a.samples,
                env=self.environment(),
            )
        return out

    def time(
        self, measurement: Measurement, config: DeploymentConfig, budget_s: Optional[float] = None, memory: bool = True
    ) -> Measurement:
        """Fill in latency and throughput, timed on this hardware, and peak memory unless memory=False."""
        batches = self.latency_batches()
        lat = time_forward(
            self.runner(config),
            batches,
            device=self.device,
            budget_s=self.latency_budget_s if budget_s is None else budget_s,
        )
        measurement.latency_p50_ms, measurement.latency_p90_ms = lat.p50_ms, lat.p90_ms
        measurement.latency_p99_ms, measurement.throughput = lat.p99_ms, lat.throughput
        if memory:
            mem = peak_memory_mb(self.model, config, self.latency_batches()[0], self.device)
            measurement.memory_mb, measurement.memory_method = mem["peak_mb"], mem["method"]
        measurement.env = {**self.environment(), "latency_reps": lat.reps, "warmup": lat.warmup}
        return measurement

    def time_interleaved(self, configs: list, budget_s: float, seed: int = 0, rounds: Optional[int] = None,
                         stop=None) -> dict:  # fmt: skip
        """{config: metrics} for `configs` timed round-robin in shuffled rounds (measure/interleaved.py),
        budget_s of timing each, with 95 % bootstrap intervals of every timed figure, and peak memory.

        Where the runtime's forwards hold memory of their own (onnxruntime sessions) and all of them do not
        fit at once, the configs are timed in groups, one after another (Runtime.memory_groups), and each
        group's forwards are released before the next is built. A session's rounds are then numbered across
        its groups, and each config's ROUND_FIGURES has None in the rounds of the other groups: configs of
        different groups share no round, so no paired comparison pairs them. Without `rounds`,
        interleaved.rounds_for chooses them, group by group. stop(rounds done, {config: its ROUND_FIGURES so
        far}) -> configs to visit no more: interleaved.time_interleaved's `stop`, asked of each group's configs."""
        from adasearch.measure.interleaved import ROUND_FIGURES, time_interleaved

        configs = list(dict.fromkeys(configs))
        batches = self.latency_batches()
        groups = self.runtime.memory_groups([self.model.plan(**c.to_dict()) for c in configs])
        out, group_rounds = {}, []
        for g, members in enumerate(groups):
            fns = [self.runner(configs[i]) for i in members]  # built (compiled, captured, exported) before any round
            timed = time_interleaved(fns, batches, sync=_synchronizer(self.device), budget_s=budget_s, rounds=rounds,
                                     seed=seed + g, stop=_asked_of(stop, [configs[i] for i in members]))  # fmt: skip
            del fns
            if len(groups) > 1:
                self.runtime.release()
            group_rounds.append(len(next(iter(timed[0][ROUND_FIGURES].values()))))  # rounds_for may choose per group
            for i, figures in zip(members, timed):
                out[configs[i]] = figures
        for g, members in enumerate(groups):  # each group's rounds, numbered after the groups before it
            before, after = [None] * sum(group_rounds[:g]), [None] * sum(group_rounds[g + 1 :])
            for i in members:
                figures = out[configs[i]]
                figures[ROUND_FIGURES] = {name: before + v + after for name, v in figures[ROUND_FIGURES].items()}
                mem = peak_memory_mb(self.model, configs[i], batches[0], self.device)
                out[configs[i]] = {**figures, MEMORY_METRIC: mem["peak_mb"]}
        return {c: out[c] for c in configs}

    def runner(self, config: DeploymentConfig):
        """x -> logits of config on a latency batch, as the spec's runtime runs it (built on first use)."""
        return self.runtime.forward(self.model.plan(**config.to_dict()), self.latency_batches()[0])

    def timing_exit_depths(self, config: DeploymentConfig) -> list:
        """Per latency batch (the images `time` cycles through), each image's exit depth under config."""
        b = self.hardware.batch_size
        depths = self.accuracy.exit_depths(config)
        return [depths[k * b : (k + 1) * b].tolist() for k in range(len(self.latency_batches()))]

    def timing_trace(self, config: DeploymentConfig) -> Optional[tuple]:
        """What a forward of config runs on each latency batch: per block run, how many of the batch's rows
        still run it, its tokens, granularities and FFN width, and whether an exit check (a readout) follows;
        then whether the last block's readout runs. Configs with one trace run the same operations on the
        images they are timed on (an exit config's threshold and a depth cap its images never reach change
        none), so their timings differ by noise alone (finalists.fold_twins). None when the images' exits are
        not known without a pass of their own (a config whose accuracy another node measured): no twin of any."""
        if not self.accuracy.measured(config):
            return None
        plan = self.model.plan(**config.to_dict())
        trace = []
        for depths in self.timing_exit_depths(config):
            ran = max(depths)
            blocks = tuple(
                (sum(d > i for d in depths), plan.tokens[i], plan.grans[i], plan.hidden[i],
                 plan.taus[i] is not None and i != plan.depth - 1)
                for i in range(ran)
            )  # fmt: skip
            trace.append((blocks, ran == plan.depth))
        return tuple(trace)

    def latency_fingerprint(self) -> dict:
        """What part timings depend on: the target (device and its name, torch, threads, dtype, batch
        size) and the architecture (not the weights: they change no shape)."""
        import hashlib
        import json

        env = self.environment()
        arch = json.dumps(self.model.cfg.to_dict(), sort_keys=True, default=str)
        return {
            **{k: env.get(k) for k in TARGET_KEYS},
            "architecture": hashlib.sha256(arch.encode()).hexdigest()[:16],
        }

    def profile_latency(self, configs: list, progress=None, seed: int = 0):
        """A latency model (measure/latency_model.py) of this target for every part `configs` use,
        calibrated on whole forwards of references among them: the static forms at the quantiles
        REFERENCE_QUANTILES of their MACs, and, when some can exit, the exit configs at the
        EXIT_REFERENCE_QUANTILES of theirs (the exit curve needs its light end: most fronts' fast end exits)."""
        from adasearch.measure.latency_model import profile

        def at_quantiles(candidates: list, quantiles, macs=self.cost.config_macs) -> list:
            ranked = sorted(set(candidates), key=lambda c: (macs(c), c.label()))
            return list(dict.fromkeys(ranked[round(q * (len(ranked) - 1))] for q in quantiles))

        plans = [self.model.plan(**c.to_dict()) for c in configs]
        static = at_quantiles([replace(c, depth_tau=None) for c in configs], REFERENCE_QUANTILES)
        exiting = [c for c, p in zip(configs, plans) if any(t is not None for t in p.taus[:-1])]
        references = [(c.to_dict(), self.model.plan(**c.to_dict()), None) for c in static]
        if exiting:  # by expected MACs (the samples that stop early run less), as close to their sums as can be known
            fractions = {c: a.exit_fractions for c, a in self.accuracy.measure(exiting).items()}
            chosen = at_quantiles(exiting, EXIT_REFERENCE_QUANTILES, lambda c: self.cost.config_macs(c, fractions[c]))
            references += [(c.to_dict(), self.model.plan(**c.to_dict()), self.timing_exit_depths(c)) for c in chosen]
        return profile(self.model, self.latency_batches(), plans, references, fingerprint=self.latency_fingerprint(),
                       sync=_synchronizer(self.device), progress=progress, seed=seed, runtime=self.runtime)  # fmt: skip

    def reanchor_latency(self, latency_model, figures: dict):
        """latency_model calibrated again on new timings of its references ({config: figures}, timed
        interleaved with the finalists; measure/latency_model.py's `reanchored`)."""
        from adasearch.metrics import P50

        static, exiting = [], []
        for ref in latency_model.references:
            config = DeploymentConfig.from_dict(ref["config"])
            if config not in figures:
                continue
            plan, p50 = self.model.plan(**config.to_dict()), figures[config][P50]
            if ref.get("exits"):
                exiting.append((plan, self.timing_exit_depths(config), p50))
            else:
                static.append((plan, p50))
        return latency_model.reanchored(static, exiting)

    def predict_latency(self, latency_model, config: DeploymentConfig) -> dict:
        """The timed figures of config predicted by latency_model, on the images the timer would use."""
        plan = self.model.plan(**config.to_dict())
        exits = any(t is not None for t in plan.taus[:-1])
        return latency_model.predict(plan, self.timing_exit_depths(config) if exits else None)

    def measure(self, configs: Iterable[DeploymentConfig], latency: bool = True) -> dict:
        results = self.measure_accuracy_and_cost(configs)
        if latency:
            for c, m in results.items():
                self.time(m, c)
        return results


def build_evaluator(
    model_source: str,
    data_source: str,
    hardware: Hardware,
    *,
    limit: Optional[int] = None,
    data_seed: int = 0,
    data_key: str = "data",
    cache_dir=None,
    latency_budget_s: float = 0.5,
    holdout: float = 0.0,
) -> Evaluator:
    """Model + data + hardware -> an Evaluator: the wiring `measure` and `run` share.

    Fails on an unavailable device before any loading, and on labels the model cannot have (naming
    `data_key`, the flag or spec key the data came from). holdout > 0 keeps that fraction of the images
    out of what the Evaluator measures, as `evaluator.heldout` (data/split.py)."""
    from adasearch.data.datasets import check_labels, load_data
    from adasearch.data.split import holdout_split
    from adasearch.model.loading import load_model

    resolve_device(hardware.device)
    model = load_model(model_source)
    data = load_data(
        data_source, limit=limit, seed=data_seed, img_size=model.cfg.img_size, channels=model.cfg.in_channels
    )
    check_labels(data, model.cfg.num_classes, data_key)
    search, heldout = holdout_split(data, holdout, data_seed)
    evaluator = Evaluator(model, search, hardware, cache_dir=cache_dir, latency_budget_s=latency_budget_s)
    evaluator.heldout = heldout
    return evaluator


def _asked_of(stop, group: list):
    """interleaved.time_interleaved's stop for one group of configs (in the order of its run_fns), from a
    stop that takes and returns configs; None without one."""
    if stop is None:
        return None

    def asked(rounds_done: int, figures: dict) -> list:
        stopped = set(stop(rounds_done, {group[i]: f for i, f in figures.items()}))
        return [i for i, c in enumerate(group) if c in stopped]

    return asked
