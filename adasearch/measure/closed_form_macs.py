"""MACs of a config from the shapes alone: adasearch's one source of truth for compute.

Convention: 1 MAC = one multiply-add (fvcore calls this one "flop"); FLOPs = 2 x MACs. Counted:
convolutions, linear layers and attention matmuls. Not counted: LayerNorm, GELU, softmax, RoPE
rotations and residual adds (elementwise, a fraction of a percent at the released size). Attention in
the blocks is dense: SDPA with a boolean mask computes every (query, key) entry, the masked ones
included, so 2*N^2*D MACs per block whatever the granularities.

`inspect`, `measure` and `run` all print these numbers; the tests cross-check every stage against
fvcore's tracer (measure/fvcore_macs.py) and torch.utils.flop_counter.

A forward is a sum of stages (embedding, read, blocks, readouts). Under early exit each block and
each exit check is weighted by the fraction of samples that run it (see `expected_macs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from adasearch.model.adaperceiver import AdaPerceiverConfig, LayerPlan

MACS_CONVENTION = (
    "MACs: 1 = one multiply-add (fvcore's 'flop'); FLOPs = 2 x MACs; matmuls, convs and dense "
    "attention (masked entries are computed); norms, activations and softmax not counted"
)


def embed_macs(cfg: AdaPerceiverConfig, num_patches: Optional[int] = None) -> int:
    P, D, F = num_patches or cfg.num_patches, cfg.embed_dim, cfg.ffn_hidden
    conv = P * D * cfg.in_channels * cfg.patch_size**2
    return conv + (2 * P * D * F if cfg.use_embed_ffn else 0)


def read_macs(cfg: AdaPerceiverConfig, n: int, num_patches: Optional[int] = None) -> int:
    P, D = num_patches or cfg.num_patches, cfg.embed_dim
    return 2 * n * D * D + 2 * P * D * D + 2 * n * P * D  # q, proj | k, v | QK^T, AV


def block_macs(cfg: AdaPerceiverConfig, n: int, hidden: int) -> int:
    D = cfg.embed_dim
    return 4 * n * D * D + 2 * n * D * hidden + 2 * n * n * D


def readout_macs(cfg: AdaPerceiverConfig, n: int) -> int:
    """write head (one query over n latents) + classifier."""
    D, C, F = cfg.embed_dim, cfg.num_classes, cfg.ffn_hidden
    write = 2 * D * D + 2 * n * D * D + 2 * n * D
    head = D * F + F * C if cfg.use_output_ffn else D * C
    return write + head


class ClosedFormStages:
    """MACs per stage of one image's forward, by the formulas above. fvcore_macs.FvcoreStages has the
    same methods, counted by tracing instead; `expected_macs` composes either."""

    def __init__(self, cfg: AdaPerceiverConfig, num_patches: Optional[int] = None):
        self.cfg, self.num_patches = cfg, num_patches

    def embed(self) -> int:
        return embed_macs(self.cfg, self.num_patches)

    def read(self, n: int) -> int:
        return read_macs(self.cfg, n, self.num_patches)

    def block(self, n: int, hidden: int, grans: tuple) -> int:
        return block_macs(self.cfg, n, hidden)  # dense attention: the mask (grans) does not change it

    def readout(self, n: int) -> int:
        return readout_macs(self.cfg, n)


def expected_macs(stages, plan: LayerPlan, exit_fractions: Optional[Sequence[float]] = None) -> float:
    """Expected MACs per image. exit_fractions[e-1] = fraction of samples that exit after block e (sums
    to 1; default: everyone runs all plan.depth blocks). A block runs for the samples still alive
    before it; an exit check (a write + head) after block i runs for the samples alive after it when
    that block has a threshold; the final readout runs for those who reach the last block."""
    d = plan.depth
    frac = list(exit_fractions) if exit_fractions is not None else [0.0] * (d - 1) + [1.0]
    if len(frac) != d:
        raise ValueError(f"exit_fractions has {len(frac)} entries for depth {d}")
    alive = [sum(frac[i:]) for i in range(d)]  # alive[i]: fraction that runs block i
    total = float(stages.embed() + stages.read(plan.tokens[0]))
    for i in range(d):
        total += alive[i] * stages.block(plan.tokens[i], plan.hidden[i], plan.grans[i])
        if i < d - 1 and plan.taus[i] is not None:
            total += alive[i] * stages.readout(plan.tokens[i])
    return total + frac[d - 1] * stages.readout(plan.tokens[d - 1])


def plan_macs(cfg: AdaPerceiverConfig, plan: LayerPlan, num_patches: Optional[int] = None) -> int:
    """MACs of running every block of the plan, with an exit check after each block that has a threshold."""
    return int(expected_macs(ClosedFormStages(cfg, num_patches), plan))


class CostModel:
    """Per-image MACs of any config of one model: closed-form stages composed under early exit.

    stages: a ClosedFormStages (the default) or an fvcore_macs.FvcoreStages for a cross-check."""

    def __init__(self, model, image_size: Optional[tuple] = None, stages=None):
        cfg = model.cfg
        self.model = model
        size = image_size or (cfg.img_size, cfg.img_size)
        num_patches = (size[0] // cfg.patch_size) * (size[1] // cfg.patch_size)
        self.stages = stages or ClosedFormStages(cfg, num_patches)

    def plan_macs(self, plan: LayerPlan, exit_fractions: Optional[Sequence[float]] = None) -> float:
        return expected_macs(self.stages, plan, exit_fractions)

    def config_macs(self, config, exit_fractions: Optional[Sequence[float]] = None) -> float:
        return self.plan_macs(self.model.plan(**config.to_dict()), exit_fractions)
