"""A latency model of the target: the parts of a forward timed once, interleaved, predicting any config.

A forward (model.forward_plan) is close to a sum of parts:
- embedding + read at the first block's token count, on the whole batch;
- each executed block, at its (tokens, granularities, FFN width) and the samples still running;
- each exit check (a readout and the confidence), on the samples still running; where some samples
  stop, the check also writes their logits and splits the batch (a "stop", timed as its own part);
- the final readout, on the samples left;
plus what lies outside them (validating the knobs, Python dispatch). Where a runtime runs a static
config as one call (a compiled graph, a captured CUDA graph, an ONNX Runtime session) but the parts as a
call each, every part's timing carries a call's own cost, which the whole pays once: the profile times a
call that computes next to nothing (`call:bB`), and a static config's sum drops one such call per part
but one. Exit configs run as parts under those runtimes, and keep the whole sum.

Profiling (`profile`) times every distinct part the configs can use: ROUNDS rounds, each visiting
every part in a new random order (seeded), one warm-up call and REPS timed calls per visit (one, for
a call of LONG_MS or more), so drift and bursts land on all parts alike. A part's figure is the
median of its timings. Under per-sample exit a batch shrinks, so the parts after the first block are
also timed at the active counts in active_sizes(B) and interpolated linearly in between.

Whole forwards of a few reference configs are timed in the same rounds, cycling through the timing
images as the timer does: static configs at quantiles of the space's MACs, and (when the space has
exits) three exit configs, the lightest, median and heaviest by expected MACs. They calibrate the sum of
parts: a static reference gives the ratio of its whole forward to its sum of parts, and a static
config's sum is scaled by the ratio interpolated at its sum (the `curve`; it takes in what lies outside
the parts, and what running parts back to back costs more or less than running each alone; under compile
or CUDA graphs, also what one graph of the whole saves over one per part). An exit config runs as its
parts with the host's checks between them, under every runtime, and switches paths from image to image,
which costs more than the parts timed each on its own path, so exit configs have a curve of their own
(`exit_curve`), never the static one (that one measures whole graphs, which an exit config is not, and
it bent exit predictions by depth under compile). Each exit reference gives one point, placed at the
median of its batches' plain sums: when profiling, the median of its timings each divided by the plain
sum of the batch it ran; when re-anchored, its p50 over the p50 predicted from its plain sums. An exit
config's batch sums are scaled by the ratio interpolated at the median of its own. A point is kept
within EXIT_RATIO_BOUNDS (one disturbed timing of a reference moves every config on its side of the
curve), and references with the same median sum share a point, their median. One factor for all (the
median of the references' ratios, version 3) misjudged both ends under load, where a long exit forward
can take more over its parts than a short one (bench/latency_model.py --busy prints both). The ratios
over each reference's own are the noise of exit configs. The static references' timings over their own
medians are the noise of static configs.

Prediction (`predict`) for a config at batch B, on the images the timer cycles through: each image's
exit depth (known exactly from the accuracy cache) gives, per batch, the samples running each block
and so the batch's calibrated sum. The timer cycles its batches equally, so p50, p90 and p99 are the
percentiles of the mixture {batch sum x noise ratio} over the batches and the noise ratios: the tail
of a config comes from the batches that run deep and from the target's noise measured on whole
forwards, not on parts. Throughput is B over the mixture's mean.

The model is JSON (latency_model.json in the results folder), stored with the fingerprint of what it
depends on (device and its name, torch, threads, dtype, batch size, the architecture); `usable`
refuses one of another fingerprint, one that is corrupt, or one that lacks parts the space needs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from adasearch.metrics import P50, P90, P99, THROUGHPUT
from adasearch.model.adaperceiver import LayerPlan

VERSION = 4  # 2: the runtime's call part (call:bB); 3: exit configs scale the plain sum; 4: by an exit curve
ROUNDS = 12
REPS = 3  # timed calls of a part (or a reference forward) per visit
LONG_MS = 50.0  # a call at least this long is timed once per visit (after its warm-up)
EXIT_RATIO_BOUNDS = (0.25, 4.0)  # an exit curve's ratios: room for a loaded machine, none for an absurd timing
NEVER = 2.0  # a confidence threshold no sample reaches: an exit check that splits off nobody
MAX_FIGURE = 3.6e6  # ms in an hour: no part or forward takes longer, and no ratio or factor comes near it
PART_KEY = re.compile(r"(embed_read|exit|stop|readout):n\d+:b\d+|block:n\d+:h\d+:g(none|\d+(-\d+)*):b\d+|call:b\d+")


def active_sizes(batch_size: int, exits: bool) -> list:
    """Active batch sizes the shrinking parts are timed at: 1, 2, 4, ... and the batch size itself."""
    if not exits:
        return [batch_size]
    sizes, b = {batch_size}, 1
    while b < batch_size:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def _grans(g) -> str:
    return "-".join(str(v) for v in g) if g else "none"


def part_keys(plan: LayerPlan, batch_size: int) -> list:
    """The parts a forward under `plan` runs at this batch size (at every active size if it can exit)."""
    exits = any(t is not None for t in plan.taus[:-1])
    sizes = active_sizes(batch_size, exits)
    keys = [f"embed_read:n{plan.tokens[0]}:b{batch_size}"]
    for i in range(plan.depth):
        n = plan.tokens[i]
        keys += [f"block:n{n}:h{plan.hidden[i]}:g{_grans(plan.grans[i])}:b{b}" for b in sizes]
        if plan.taus[i] is not None and i < plan.depth - 1:
            keys += [f"{kind}:n{n}:b{b}" for b in sizes for kind in ("exit", "stop")]
    keys += [f"readout:n{plan.tokens[-1]}:b{b}" for b in sizes]
    return keys


@dataclass
class LatencyModel:
    fingerprint: dict
    batch_size: int
    parts: dict  # part key -> median ms
    curve: list  # [[sum of parts ms, whole forward / sum]] of the static references, by sum
    exit_curve: list  # [[median plain batch sum ms, timing over plain sums]] of the exit references (docstring)
    noise: list  # ratios of the static references' timings to their medians
    references: list = field(default_factory=list)  # [{"config", "median_ms", "sum_ms", "exits"}]
    exit_noise: list = field(default_factory=list)  # the exit references' ratios over their own median ratio
    rounds: int = ROUNDS
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------- prediction

    def _part(self, kind: str, n: int, b: int, extra: str = "") -> float:
        """A part's median at active size b, interpolated between the profiled sizes."""
        if not self._index:
            points: dict = {}
            for key, value in self.parts.items():
                prefix, size = key.rsplit(":b", 1)
                points.setdefault(prefix + ":", []).append((int(size), value))
            self._index.update({p: tuple(zip(*sorted(v))) for p, v in points.items()})
        prefix = f"{kind}:n{n}:{extra}"
        if prefix not in self._index:
            raise KeyError(f"{prefix}b{b}")
        sizes, values = self._index[prefix]
        return values[0] if len(sizes) == 1 else float(np.interp(b, sizes, values))

    def batch_sum(self, plan: LayerPlan, exit_depths: Optional[Sequence[int]] = None) -> float:
        """Sum of part medians for one batch whose samples stop after exit_depths (None: all run every block)."""
        depths = np.full(self.batch_size, plan.depth) if exit_depths is None else np.asarray(exit_depths)
        total = self.parts[f"embed_read:n{plan.tokens[0]}:b{self.batch_size}"]
        for i in range(plan.depth):
            active = int((depths >= i + 1).sum())
            if active == 0:
                return total
            n = plan.tokens[i]
            total += self._part("block", n, active, f"h{plan.hidden[i]}:g{_grans(plan.grans[i])}:")
            if plan.taus[i] is not None and i < plan.depth - 1:
                total += self._part("stop" if (depths == i + 1).any() else "exit", n, active)
        left = int((depths >= plan.depth).sum())
        if left:
            total += self._part("readout", plan.tokens[-1], left)
        if not any(t is not None for t in plan.taus[:-1]):  # static: one call of the whole, not one per part
            total -= min((plan.depth + 1) * self.parts.get(f"call:b{self.batch_size}", 0.0), total / 2)
        return total

    def calibrated(self, total_ms: float) -> float:
        """A sum of parts as a whole forward takes it: scaled by the curve's ratio at that sum."""
        sums, ratios = zip(*self.curve)
        return total_ms * float(np.interp(total_ms, sums, ratios))

    def exit_ratio(self, batch_sums: Sequence[float]) -> float:
        """What an exit config takes over its plain sums of parts: the exit curve at their median."""
        if not self.exit_curve:
            return 1.0
        sums, ratios = zip(*self.exit_curve)
        return float(np.interp(float(np.median(batch_sums)), sums, ratios))

    def predict(self, plan: LayerPlan, exit_depths: Optional[Sequence[Sequence[int]]] = None) -> dict:
        """{p50, p90, p99 (ms per batch), throughput} of a config, from the exit depths of each timed batch."""
        if exit_depths is None:
            sums, noise = np.array([self.calibrated(self.batch_sum(plan))]), self.noise
        else:
            plain = np.array([self.batch_sum(plan, d) for d in exit_depths])
            sums, noise = self.exit_ratio(plain) * plain, self.exit_noise or self.noise
        mixture = (sums[:, None] * np.asarray(noise)[None, :]).ravel()
        p90, p99 = np.percentile(mixture, [90, 99])
        return {  # p50 as the timer takes it (interleaved.typical_ms): each batch's median, their median
            P50: float(np.median(sums) * np.median(noise)),
            P90: float(p90),
            P99: float(p99),
            THROUGHPUT: self.batch_size * 1e3 / float(mixture.mean()),
        }

    def reanchored(self, static: list, exiting: list) -> LatencyModel:
        """This model with its calibration re-taken from new timings of its references: static is
        [(plan, measured p50)], exiting [(plan, exit depths per batch, measured p50)]. The parts stay;
        both curves follow the machine at the moment of those timings (a curve with no new timing stays)."""
        curve = {}
        for plan, p50 in static:
            total = self.batch_sum(plan)
            if total > 0 and p50 > 0:
                curve[total] = p50 / total
        plain = replace(self, exit_curve=[])  # predicts each exit reference from its plain sums
        points = []
        for plan, exits, p50 in exiting:
            sums = [self.batch_sum(plan, d) for d in exits]
            if p50 > 0 and min(sums) > 0:
                points.append((float(np.median(sums)), p50 / plain.predict(plan, exits)[P50]))
        return replace(
            self,
            curve=[[s, r] for s, r in sorted(curve.items())] or self.curve,
            exit_curve=exit_curve(points) or self.exit_curve,
        )

    # ---------------------------------------------------------------- storage

    def to_dict(self) -> dict:
        return {
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "calibration": {"curve": self.curve, "exit_curve": self.exit_curve},
            "references": self.references,
            "noise": self.noise,
            "exit_noise": self.exit_noise,
            "parts": self.parts,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> LatencyModel:
        """Raises ValueError (what is wrong) for a document that is not a latency model of this version."""
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} latency model")
        try:
            parts = {str(k): float(v) for k, v in doc["parts"].items()}
            noise = [float(r) for r in doc["noise"]]
            cal = doc["calibration"]
            model = cls(
                fingerprint=dict(doc["fingerprint"]),
                batch_size=int(doc["batch_size"]),
                parts=parts,
                curve=sorted([float(a), float(b)] for a, b in cal["curve"]),
                exit_curve=sorted([float(a), float(b)] for a, b in cal["exit_curve"]),
                noise=noise,
                references=list(doc.get("references", [])),
                exit_noise=[float(r) for r in doc.get("exit_noise", [])],
                rounds=int(doc.get("rounds", ROUNDS)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed ({type(e).__name__}: {e})") from None
        bad_key = next((k for k in parts if not PART_KEY.fullmatch(k)), None)
        if bad_key is not None:
            raise ValueError(f"malformed (part {bad_key!r} is not kind:n<tokens>:...:b<batch>)")
        if model.batch_size != model.fingerprint.get("batch_size"):
            raise ValueError(f"malformed (batch_size {model.batch_size} is not its fingerprint's)")
        sums = [s for s, _ in model.curve + model.exit_curve]
        figures = [*parts.values(), *noise, *model.exit_noise, *(r for _, r in model.curve + model.exit_curve)]
        if not np.isfinite([*figures, *sums]).all() or min(figures, default=1.0) <= 0 or min(sums, default=0) < 0:
            raise ValueError("malformed (a time, ratio or factor that is not a positive finite number)")
        if max([*figures, *sums]) > MAX_FIGURE:
            raise ValueError(f"malformed (a time, ratio or factor over {MAX_FIGURE:g})")
        if not noise or not model.curve or not parts:
            raise ValueError("malformed (no parts, noise ratios or calibration curve)")
        return model

    def why_unusable(self, fingerprint: dict, needed: Iterable[str]) -> Optional[str]:
        """None when this model can predict for `fingerprint` and the parts `needed`; else why not."""
        if self.fingerprint != fingerprint:
            changed = [
                k
                for k in sorted(set(fingerprint) | set(self.fingerprint))
                if fingerprint.get(k) != self.fingerprint.get(k)
            ]
            what = ", ".join(f"{k} {self.fingerprint.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            return f"built for another target ({what})"
        missing = [k for k in needed if k not in self.parts]
        if missing:
            return f"lacks {len(missing)} parts this space needs (e.g. {missing[0]})"
        return None


def exit_curve(points: Iterable[tuple]) -> list:
    """[[sum, ratio]] by sum from (median plain sum, ratio) points: ratios within EXIT_RATIO_BOUNDS, and
    one point per sum (the median of those that share it), so that interpolation is defined."""
    by_sum: dict = {}
    for total, ratio in points:
        by_sum.setdefault(total, []).append(float(np.clip(ratio, *EXIT_RATIO_BOUNDS)))
    return [[s, float(np.median(r))] for s, r in sorted(by_sum.items())]


# -------------------------------------------------------------------- profiling


def _part_fns(model, parts, x: torch.Tensor, keys: Iterable[str]) -> dict:
    """{key: zero-argument callable that runs that part once as `parts` (the runtime's) run it}, on latents
    read from real images."""
    latents: dict = {}

    def read(n: int) -> torch.Tensor:
        if n not in latents:
            latents[n] = model.read(model.embed(x), n).clone()  # its own memory: a runtime's output is reused
        return latents[n]

    grans_of = {}
    fns = {}
    for key in keys:
        kind, *fields = key.split(":")
        f = {s[0]: s[1:] for s in fields}
        n, b = int(f["n"]), int(f["b"])
        if kind == "embed_read":
            fns[key] = lambda n=n: parts.embed_read(x, n)
        elif kind == "block":
            g = grans_of.setdefault(f["g"], None if f["g"] == "none" else tuple(int(v) for v in f["g"].split("-")))
            fns[key] = lambda n=n, b=b, h=int(f["h"]), g=g: parts.run_block(0, read(n)[:b], g, h)
        elif kind == "exit":

            def check(n=n, b=b):  # an exit check where nobody stops: readout, confidence, the count
                lat = read(n)[:b]
                model.exit_split(parts.readout(lat), NEVER)
                return lat

            fns[key] = check
        elif kind == "stop":

            def stop(n=n, b=b):  # what forward_plan does when every sample of the batch stops here
                lat = read(n)[:b]
                step = parts.readout(lat)
                _, going, leaving = model.exit_split(step, 0.0)
                logits, active = step.new_zeros(b, step.shape[-1]), torch.arange(b, device=lat.device)
                depth = torch.full((b,), 1, dtype=torch.long, device=lat.device)
                logits[active[leaving]] = step[leaving]
                depth[active[leaving]] = 1
                return lat[going]

            fns[key] = stop
        elif kind == "readout":
            fns[key] = lambda n=n, b=b: parts.readout(read(n)[:b])
    return fns


def profile(
    model,
    batches: Sequence[torch.Tensor],
    plans: Sequence[LayerPlan],
    references: Sequence[tuple],
    *,
    fingerprint: dict,
    sync: Callable[[], None] = lambda: None,
    clock: Optional[Callable[[], float]] = None,
    rounds: int = ROUNDS,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    runtime=None,
) -> LatencyModel:
    """Time every part the `plans` use, and the whole forwards of `references` ([(config dict, plan,
    exit depths per batch or None for a static config)]), interleaved (see the module docstring).
    batches: the timing images, one batch of the target's batch size each, on the model's device and
    dtype; parts run on the first, references cycle through all of them as the timer does. runtime
    (adasearch/runtimes.py; default eager) runs the parts and the references as the target does."""
    import time

    clock = clock or time.perf_counter
    x = batches[0]
    batch_size = x.shape[0]
    keys = sorted({k for plan in [*plans, *(r[1] for r in references)] for k in part_keys(plan, batch_size)})
    calls = [0] * len(references)
    if runtime is None:
        from adasearch.runtimes import EagerRuntime

        runtime = EagerRuntime(model, x.device)
    whole = [runtime.forward(plan, x) for _, plan, _ in references]  # built before any round

    def forward(i: int):
        calls[i] += 1
        return whole[i](batches[calls[i] % len(batches)])

    with torch.inference_mode():
        fns = _part_fns(model, runtime.parts(), x, keys)
        null = getattr(runtime.parts(), "null", None)
        if null is not None:  # the cost of a call under this runtime (see the module docstring)
            keys.append(f"call:b{batch_size}")
            tiny = x.new_zeros(1)
            fns[keys[-1]] = lambda: null(tiny)
        for fn in fns.values():  # a part's first call builds it where the runtime is lazy: not in a round
            fn()
        for i in range(len(references)):
            fns[f"forward:{i}"] = lambda i=i: forward(i)
        names = list(fns)
        samples: dict = {name: [] for name in names}
        ran_on = {i: [] for i in range(len(references))}  # reference -> the batch index of each timing
        rng = random.Random(seed)
        for r in range(rounds):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                fn = fns[name]
                fn()  # warm-up after a change of part, as the timer does
                for _ in range(REPS):
                    sync()
                    t0 = clock()
                    fn()
                    sync()
                    ms = (clock() - t0) * 1e3
                    samples[name].append(ms)
                    if name.startswith("forward:"):
                        i = int(name.split(":")[1])
                        ran_on[i].append(calls[i] % len(batches))
                    if ms >= LONG_MS:  # long calls: one per visit keeps the profile short
                        break
            if progress:
                progress(r + 1, rounds)
    parts = {k: float(np.median(samples[k])) for k in keys}
    lm = LatencyModel(fingerprint, batch_size, parts, [[1.0, 1.0]], [], [1.0], rounds=rounds)
    refs, noise, static, exit_ratios = [], [], [], []
    for i, (config, plan, exits) in enumerate(references):
        times = np.array(samples[f"forward:{i}"])
        median = float(np.median(times))
        if exits is None:
            static.append((plan, median))
            noise += (times / median).tolist() if median > 0 else [1.0] * len(times)
        refs.append({"config": config, "median_ms": median, "sum_ms": lm.batch_sum(plan), "exits": exits is not None})
    lm = lm.reanchored(static, [])  # the curve, from the static references
    lm.noise = sorted(noise) or [1.0]
    points = []
    for i, (_, plan, exits) in enumerate(references):
        if exits is not None:  # each timing against the plain sum of the batch it ran (the warm-ups are not timed)
            sums = [lm.batch_sum(plan, exits[b]) for b in ran_on[i]]
            ratios = [t / p for t, p in zip(samples[f"forward:{i}"], sums) if p > 0 and t > 0]
            if ratios:
                own = float(np.median(ratios))
                points.append((float(np.median([lm.batch_sum(plan, d) for d in exits])), own))
                exit_ratios += [r / own for r in ratios]
    lm.exit_curve = exit_curve(points)
    lm.exit_noise = sorted(exit_ratios)
    lm.references = refs
    return lm
