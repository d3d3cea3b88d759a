"""Top-1 / top-5 of many configs at once, sharing one anytime pass per structural key.

Why it is cheap: by the prefix property, one forward at max_latent_tokens read out after every
block gives the predictions of every (token count on a block boundary) x (depth) config of one width
and granularity setting. Per-sample early exit for any thresholds, and any non-increasing token
schedule whose counts are all boundaries, are then computed from the cached per-block confidences
without running the model again. Configs that cannot share (a count off a block boundary, more
tokens than max_latent_tokens) run directly.

What is cached per sample, per block and per prefix: the top-1 class, whether the label is in the
top 5, and the max-softmax confidence. The cache lives on disk, keyed by the weights' hash, the
data's fingerprint, the dtype and the structural key, so another hardware target never recomputes
accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.model.adaperceiver import AdaPerceiver, make_plan

CACHE_VERSION = 2  # 2: per-sample top-5 hits stored as "in_top5"


@dataclass
class AccuracyResult:
    top1: float
    top5: float
    mean_exit_depth: float
    exit_fractions: list  # exit_fractions[e-1]: fraction of samples that stop after block e
    samples: int
    shared: bool  # computed from a shared anytime pass (True) or a direct forward (False)
    predictions: Optional[torch.Tensor] = field(default=None, repr=False)  # (samples,) top-1 classes


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADASEARCH_CACHE", Path.home() / ".cache" / "adasearch")) / "anytime"


def model_fingerprint(model: AdaPerceiver) -> str:
    """sha256 over config and every tensor's bytes: two checkpoints share a cache only if identical."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def structural_key(model: AdaPerceiver, config: DeploymentConfig) -> tuple:
    """What the shared pass depends on: each layer's FFN width and granularity list."""
    plan = make_plan(model.cfg, mat_dim=config.mat_dim, token_grans=config.token_grans)
    return plan.hidden, plan.grans  # over all L layers at max_latent_tokens


def _top5_hit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = min(5, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == y[..., None]).any(-1)


class AccuracyEngine:
    """Measures top-1/top-5, mean exit depth and the exit distribution of DeploymentConfigs."""

    def __init__(
        self,
        model: AdaPerceiver,
        data,
        *,
        batch_size: int = 256,
        cache_dir=None,
        progress: Optional[Callable[[str, int, int], None]] = None,
    ):
        self.model = model.eval()
        self.data = data
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress
        p = model.patch_embed.pos_embed
        self.device, self.dtype = p.device, p.dtype
        self._model_fp = None
        self._labels = None
        self._warned_cache = False
        self._memory: dict = {}  # in-process cache of loaded tables

    # ------------------------------------------------------------------ public

    def measure(self, configs: Iterable[DeploymentConfig], keep_predictions: bool = False) -> dict:
        """{config: AccuracyResult} for every config (validated against the model first)."""
        configs = list(dict.fromkeys(configs))
        for c in configs:
            c.validate(self.model.cfg)
        groups: dict = {}
        direct = []
        for c in configs:
            if self.shareable(c):
                groups.setdefault(structural_key(self.model, c), []).append(c)
            else:
                direct.append(c)
        results = {}
        for key, members in groups.items():
            table = self._shared_table(key, members[0])
            for c in members:
                results[c] = self._from_table(table, c, keep_predictions)
        for c in direct:
            results[c] = self._direct(c, keep_predictions)
        return results

    def shareable(self, config: DeploymentConfig) -> bool:
        """True when every layer's token count is a boundary that all layers share at the full pass."""
        cfg = self.model.cfg
        if not cfg.masked:
            return False
        full = make_plan(cfg, mat_dim=config.mat_dim, token_grans=config.token_grans)
        common = set.intersection(*(set(g) for g in full.grans))
        plan = make_plan(cfg, **config.to_dict())
        return all(t in common for t in plan.tokens)

    # ------------------------------------------------------------------ shared path

    def _labels_all(self) -> torch.Tensor:
        if self._labels is None:
            self._labels = self.data.labels()
        return self._labels

    def model_fingerprint(self) -> str:
        """The weights' hash (computed once): what the cache, and a run's fingerprint, are keyed by."""
        if self._model_fp is None:
            self._model_fp = model_fingerprint(self.model)
        return self._model_fp

    def _cache_path(self, kind: str, key) -> Path:
        self.model_fingerprint()
        digest = hashlib.sha256(repr((CACHE_VERSION, kind, key)).encode()).hexdigest()[:24]
        dtype = str(self.dtype).replace("torch.", "")
        return self.cache_dir / self._model_fp / self.data.fingerprint() / dtype / f"{kind}-{digest}.pt"

    def _load_or_compute(self, kind: str, key, compute) -> dict:
        path = self._cache_path(kind, key)
        if path in self._memory:
            return self._memory[path]
        if path.exists():
            try:
                table = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a torn write from a killed run: recompute it
                table = None
            if table is not None:
                self._memory[path] = table
                return table
        table = compute()
        self._memory[path] = table
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(table, tmp)
            os.replace(tmp, path)  # atomic: readers never see half a file
        except OSError as e:  # a read-only or misnamed cache costs reuse across runs, not this result
            if not self._warned_cache:
                warnings.warn(
                    f"accuracy cache {self.cache_dir} is not writable ({type(e).__name__}: {e}); "
                    f"results are not kept for the next run (set ADASEARCH_CACHE to a writable folder)",
                    stacklevel=2,
                )
                self._warned_cache = True
        return table

    def _shared_table(self, key, representative: DeploymentConfig) -> dict:
        return self._load_or_compute("anytime", key, lambda: self.anytime_table(representative))

    def anytime_table(self, representative: DeploymentConfig, data=None) -> dict:
        """The per-sample table of one anytime pass at the representative's widths and granularities,
        over `data` (default: this engine's data), computed now and not cached. A Ray task computes one
        over a shard; merge_tables joins shards into the table of the whole data."""
        data = self.data if data is None else data
        kw = {k: representative.to_dict()[k] for k in ("mat_dim", "token_grans")}
        preds, hits5, confs, prefixes = [], [], [], None
        total, done = len(data), 0
        with torch.inference_mode():
            for x, y in data.batches(self.batch_size):
                out = self.model.anytime(x.to(self.device, self.dtype), **kw)
                logits = self._finite(out.logits.float().cpu(), representative)  # (L, G, b, C)
                preds.append(logits.argmax(-1).to(torch.int32))
                hits5.append(_top5_hit(logits, y))
                confs.append(out.confidence.cpu())
                prefixes = out.prefixes
                done += len(y)
                if self.progress:
                    self.progress("anytime pass", done, total)
        return {
            "pred": torch.cat(preds, -1),
            "in_top5": torch.cat(hits5, -1),
            "conf": torch.cat(confs, -1),
            "prefixes": torch.tensor(prefixes),
        }

    def missing_tables(self, configs: Iterable[DeploymentConfig]) -> dict:
        """{structural key: a representative config} of the shared passes `configs` need that neither
        this process nor the cache on disk holds yet."""
        out: dict = {}
        for c in configs:
            if not self.shareable(c):
                continue
            key = structural_key(self.model, c)
            if key not in out and not self._cached("anytime", key):
                out[key] = c
        return out

    def table(self, representative: DeploymentConfig) -> dict:
        """The shared table of the representative's width setting (from the cache, or computed now)."""
        return self._shared_table(structural_key(self.model, representative), representative)

    def install_table(self, representative: DeploymentConfig, table: dict) -> None:
        """Keep a table computed elsewhere (merged from shards) as this process's and the cache's own."""
        self._load_or_compute("anytime", structural_key(self.model, representative), lambda: table)

    def _cached(self, kind: str, key) -> bool:
        path = self._cache_path(kind, key)
        return path in self._memory or path.exists()

    def _finite(self, logits: torch.Tensor, config: DeploymentConfig) -> torch.Tensor:
        """Logits that overflowed (inputs far outside the preprocessing, or float16's range) would
        rank classes at random and report a meaningless accuracy: refused, naming the data."""
        if not torch.isfinite(logits).all():
            dtype = str(self.dtype).replace("torch.", "")
            raise UserError(
                f"dataset {self.data.name}: the model's logits are not finite ({config.label()}, {dtype}); "
                f"check that the inputs are preprocessed as the model was trained (or use float32)"
            )
        return logits

    def _exits(self, table: dict, plan) -> tuple:
        """(exit depth per sample, prefix column per layer) of a plan, from a shared table."""
        prefixes = table["prefixes"].tolist()
        col = [prefixes.index(t) for t in plan.tokens]
        n = table["pred"].shape[-1]
        exit_depth = torch.full((n,), plan.depth, dtype=torch.long)
        running = torch.ones(n, dtype=torch.bool)
        for i in range(plan.depth - 1):
            tau = plan.taus[i]
            if tau is None:
                continue
            stop = running & (table["conf"][i, col[i]] >= tau)
            exit_depth[stop] = i + 1
            running &= ~stop
        return exit_depth, col

    def _from_table(self, table: dict, config: DeploymentConfig, keep_predictions: bool) -> AccuracyResult:
        plan = make_plan(self.model.cfg, **config.to_dict())
        exit_depth, col = self._exits(table, plan)
        n = exit_depth.shape[0]
        layer = exit_depth - 1
        column = torch.tensor(col)[layer]
        idx = torch.arange(n)
        pred = table["pred"][layer, column, idx].long()
        top5 = table["in_top5"][layer, column, idx]
        return self._result(pred, top5, exit_depth, plan.depth, True, keep_predictions)

    def exit_depths(self, config: DeploymentConfig) -> torch.Tensor:
        """(N,) the number of blocks each sample runs under `config`, in data order (from the cache)."""
        config.validate(self.model.cfg)
        plan = make_plan(self.model.cfg, **config.to_dict())
        if all(t is None for t in plan.taus[:-1]):
            return torch.full((len(self.data),), plan.depth, dtype=torch.long)
        if self.shareable(config):
            return self._exits(self._shared_table(structural_key(self.model, config), config), plan)[0]
        self._direct(config, False)
        return self._load_or_compute("direct", config.to_json(), lambda: None)["exit"]

    def measured(self, config: DeploymentConfig) -> bool:
        """Whether exit_depths(config) needs no pass: a static config, or one whose pass is in the cache
        (a Ray driver lacks those its nodes ran alone)."""
        plan = make_plan(self.model.cfg, **config.to_dict())
        if all(t is None for t in plan.taus[:-1]):
            return True
        if self.shareable(config):
            return self._cached("anytime", structural_key(self.model, config))
        return self._cached("direct", config.to_json())

    # ------------------------------------------------------------------ direct path

    def _direct(self, config: DeploymentConfig, keep_predictions: bool) -> AccuracyResult:
        def compute():
            preds, hits5, exits = [], [], []
            with torch.inference_mode():
                for x, y in self.data.batches(self.batch_size):
                    out = self.model.run(x.to(self.device, self.dtype), config)
                    logits = self._finite(out.logits.float().cpu(), config)
                    preds.append(logits.argmax(-1))
                    hits5.append(_top5_hit(logits, y))
                    exits.append(out.exit_depth.cpu())
            return {"pred": torch.cat(preds), "in_top5": torch.cat(hits5), "exit": torch.cat(exits)}

        table = self._load_or_compute("direct", config.to_json(), compute)
        depth = make_plan(self.model.cfg, **config.to_dict()).depth
        return self._result(table["pred"], table["in_top5"], table["exit"], depth, False, keep_predictions)

    def _result(self, pred, top5, exit_depth, depth, shared, keep_predictions) -> AccuracyResult:
        y = self._labels_all()
        n = len(y)
        counts = torch.bincount(exit_depth, minlength=depth + 1)[1 : depth + 1].float() / n
        return AccuracyResult(
            top1=(pred == y).sum().item() / n,
            top5=top5.sum().item() / n,  # exact fractions, not float32
            mean_exit_depth=exit_depth.float().mean().item(),
            exit_fractions=counts.tolist(),
            samples=n,
            shared=shared,
            predictions=pred if keep_predictions else None,
        )


def merge_tables(parts: list) -> dict:
    """The table of the whole data from the tables of its shards, in shard order (contiguous shards in
    data order): per-sample entries are joined along the sample axis, so the integer tables are exactly
    the single-process ones."""
    prefixes = {tuple(p["prefixes"].tolist()) for p in parts}
    if len(prefixes) != 1:
        raise ValueError(f"shard tables disagree on their prefixes: {sorted(prefixes)}")
    merged = {name: torch.cat([p[name] for p in parts], -1) for name in ("pred", "in_top5", "conf")}
    return {**merged, "prefixes": parts[0]["prefixes"].clone()}
