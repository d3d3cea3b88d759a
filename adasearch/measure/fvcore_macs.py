"""MACs counted by fvcore's tracer, stage by stage: the cross-check of the closed form.

closed_form_macs.py is what adasearch reports; the tests compare each stage's count here with it
(and with torch.utils.flop_counter), so a change to the network that the formulas miss fails there.

fvcore traces one path through the model's Python control flow, so we never trace a whole forward
(early exit would pick one path). Each stage (embedding, read, one block, one readout) is traced
alone at batch 1 for each distinct shape, with a handle for scaled_dot_product_attention (counted
dense, masked entries included) and none for layer_norm (elementwise, outside the convention).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from adasearch.model.adaperceiver import AdaPerceiver


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


def count_macs(module: nn.Module, inputs: tuple) -> int:
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


class FvcoreStages:
    """The stage interface of closed_form_macs.ClosedFormStages, counted by tracing the real modules."""

    def __init__(self, model: AdaPerceiver, image_size: Optional[tuple] = None):
        cfg = model.cfg
        self.model = model
        self.image_size = image_size or (cfg.img_size, cfg.img_size)
        self.num_patches = (self.image_size[0] // cfg.patch_size) * (self.image_size[1] // cfg.patch_size)
        self._cache: dict = {}

    def _count(self, key, fn, x) -> int:
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = count_macs(_Stage(self.model, fn), (x,))
        return self._cache[key]

    def _zeros(self, *shape):
        p = self.model.patch_embed.pos_embed
        return torch.zeros(*shape, dtype=p.dtype, device=p.device)

    def embed(self) -> int:
        c = self.model.cfg
        return self._count(("embed",), lambda m, x: m.embed(x), self._zeros(1, c.in_channels, *self.image_size))

    def read(self, n: int) -> int:
        return self._count(
            ("read", n), lambda m, p: m.read(p, n), self._zeros(1, self.num_patches, self.model.cfg.embed_dim)
        )

    def block(self, n: int, hidden: int, grans: tuple) -> int:
        return self._count(
            ("block", n, hidden),
            lambda m, z: m.run_block(0, z, grans, hidden),
            self._zeros(1, n, self.model.cfg.embed_dim),
        )

    def readout(self, n: int) -> int:
        return self._count(("readout", n), lambda m, z: m.readout(z), self._zeros(1, n, self.model.cfg.embed_dim))
