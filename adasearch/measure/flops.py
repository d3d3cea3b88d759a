"""MACs and FLOPs of a config, counted with fvcore once per component shape and then composed.

Convention (named in every output): 1 MAC = one multiply-add, which fvcore calls one "flop";
FLOPs = 2 x MACs. Counted: convolutions, linear layers and attention matmuls. Not counted:
LayerNorm, GELU, softmax, RoPE rotations, residual adds (elementwise, a fraction of a percent at
the released size). Attention is counted dense: F.scaled_dot_product_attention with a boolean mask
computes every (query, key) entry, the masked-out ones included, and so do we.

fvcore traces one path through the model's Python control flow, so we never trace a whole forward
(early exit would pick one path). Each stage (embedding, read, one block, one readout) is traced
alone at batch 1 for each distinct shape it is called with, and a config's cost is the sum of its
stages; for early exit, each block and exit-check readout is weighted by the measured fraction of
samples that run it.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from adasearch.model.adaperceiver import AdaPerceiver, LayerPlan

MACS_CONVENTION = ("MACs: 1 = one multiply-add (fvcore's 'flop'); FLOPs = 2 x MACs; matmuls, convs and dense "
                   "attention (masked entries are computed); norms, activations and softmax not counted")


def _sdpa_macs(inputs, outputs) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: Q K^T and A V, every entry computed."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, nq, dh = q
    nk, dv = k[-2], v[-1]
    b = 1
    for s in batch:
        b *= s
    return b * nq * nk * dh + b * nq * nk * dv


class _Stage(nn.Module):
    """One stage of the model as a module for fvcore's tracer; owning the model makes its weights
    parameters of the traced module rather than constants."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


def fvcore_macs(module: nn.Module, inputs: tuple) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's own DeprecationWarnings and tracer warnings
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
        # Elementwise, outside the MAC convention. (A None handle only marks the op ignored and leaves
        # fvcore's default counter in place, so give a handle that counts nothing.)
        analysis.set_op_handle("aten::layer_norm", lambda inputs, outputs: 0)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


class CostModel:
    """Per-image MACs of any config of one model, from cached per-stage fvcore counts."""

    def __init__(self, model: AdaPerceiver, image_size: Optional[tuple] = None):
        self.model = model
        cfg = model.cfg
        self.image_size = image_size or (cfg.img_size, cfg.img_size)
        self.num_patches = (self.image_size[0] // cfg.patch_size) * (self.image_size[1] // cfg.patch_size)
        self._cache: dict = {}

    def _count(self, key, fn, x) -> int:
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = fvcore_macs(_Stage(self.model, fn), (x,))
        return self._cache[key]

    def _zeros(self, *shape):
        p = self.model.patch_embed.pos_embed
        return torch.zeros(*shape, dtype=p.dtype, device=p.device)

    # stages
    def embed(self) -> int:
        c = self.model.cfg
        return self._count(("embed",), lambda m, x: m.embed(x), self._zeros(1, c.in_channels, *self.image_size))

    def read(self, n: int) -> int:
        return self._count(("read", n), lambda m, p: m.read(p, n),
                           self._zeros(1, self.num_patches, self.model.cfg.embed_dim))

    def block(self, n: int, hidden: int, grans: tuple) -> int:
        # Dense attention: the mask (grans) does not change the count, so it is not part of the key.
        return self._count(("block", n, hidden), lambda m, z: m.run_block(0, z, grans, hidden),
                           self._zeros(1, n, self.model.cfg.embed_dim))

    def readout(self, n: int) -> int:
        return self._count(("readout", n), lambda m, z: m.readout(z), self._zeros(1, n, self.model.cfg.embed_dim))

    # composition
    def plan_macs(self, plan: LayerPlan, exit_fractions: Optional[Sequence[float]] = None) -> float:
        """Expected MACs per image. exit_fractions[e-1] = fraction of samples that exit after block e
        (sums to 1; default: everyone runs all plan.depth blocks). A block runs for the samples still
        alive before it; an exit check (a write + head) after block i runs for the samples alive after
        it when that block has a threshold; the final readout runs for those who reach the last block."""
        d = plan.depth
        frac = list(exit_fractions) if exit_fractions is not None else [0.0] * (d - 1) + [1.0]
        if len(frac) != d:
            raise ValueError(f"exit_fractions has {len(frac)} entries for depth {d}")
        alive = [sum(frac[i:]) for i in range(d)]  # alive[i]: fraction that runs block i
        total = float(self.embed() + self.read(plan.tokens[0]))
        for i in range(d):
            total += alive[i] * self.block(plan.tokens[i], plan.hidden[i], plan.grans[i])
            if i < d - 1 and plan.taus[i] is not None:
                total += alive[i] * self.readout(plan.tokens[i])
        return total + frac[d - 1] * self.readout(plan.tokens[d - 1])

    def config_macs(self, config, exit_fractions: Optional[Sequence[float]] = None) -> float:
        return self.plan_macs(self.model.plan(**config.forward_kwargs()), exit_fractions)
