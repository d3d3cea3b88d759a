"""Closed-form multiply-accumulate counts of one image's forward, from the shapes alone.

Convention: 1 MAC = one multiply-add (fvcore calls this one "flop"); FLOPs = 2 x MACs.
Attention in the blocks is dense: SDPA with a boolean mask computes every (query, key) entry,
masked ones included, so 2*N^2*D MACs per block whatever the granularities.
LayerNorm, GELU, softmax and residual adds are not counted (they are elementwise).
"""
from __future__ import annotations

from typing import Optional, Sequence

from adasearch.model.adaperceiver import AdaPerceiverConfig, LayerPlan


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


def plan_macs(cfg: AdaPerceiverConfig, plan: LayerPlan, exit_checks: Optional[Sequence[int]] = None,
              num_patches: Optional[int] = None) -> int:
    """MACs of running every block of the plan, the final readout, and a readout after each block
    index in exit_checks (default: every block with a threshold, except the last)."""
    if exit_checks is None:
        exit_checks = [i for i in range(plan.depth - 1) if plan.taus[i] is not None]
    total = embed_macs(cfg, num_patches) + read_macs(cfg, plan.tokens[0], num_patches)
    total += sum(block_macs(cfg, plan.tokens[i], plan.hidden[i]) for i in range(plan.depth))
    total += sum(readout_macs(cfg, plan.tokens[i]) for i in exit_checks)
    return total + readout_macs(cfg, plan.tokens[plan.depth - 1])
