"""AdaPerceiver (arXiv 2511.18105): a Perceiver whose tokens, depth and FFN width adapt at run time.

One readable file, written from the facts in shared/reference/adaperceiver.md. Module and parameter
names match the published state_dict so the released checkpoints load strictly.

    image -> patch_embed -> read_head (latents attend to patches)
          -> blocks 0..d-1 (block-masked self-attention + Matryoshka FFN)
          -> write_head (one output query attends to the latents) -> output_adapter -> logits

Knobs, each global or per layer (see `LayerPlan`):
    num_tokens  N latent tokens (per layer: a non-increasing schedule; dropped tokens are the last ones)
    token_grans block boundaries of the mask; a query in block b sees every key before b's end
    mat_dim     nominal width; the FFN hidden size is int(mat_dim * ffn_ratio)
    depth       number of blocks run
    depth_tau   early-exit threshold on the max softmax probability, checked per sample after each block

Unlike the reference, nothing carries over between calls, and early exit is per sample: each image
stops after the first block whose own confidence reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from adasearch.checks import is_int, is_number
from adasearch.errors import InputError, KnobError

LN_EPS = 1e-6
MAX_TABLES = 256  # masks and RoPE tables a model keeps (see AdaPerceiver._table)


@dataclass
class AdaPerceiverConfig:
    """config.json of the published ClassificationAdaPerceiver, keys and defaults in the reference order."""

    embed_dim: int = 768
    num_heads: int = 12
    depth: int = 12
    max_latent_tokens: int = 256
    rope_theta: float = 10000
    ffn_ratio: float = 4.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ls_init_values: Optional[float] = 1e-6
    proj_drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    head_drop: float = 0.0
    act_layer: str = "gelu"
    norm_layer: str = "layernorm"
    ffn_layer: str = "mlp"
    attn_layer: str = "flex"
    process_token_init: str = "learned"
    block_mask: str = "block"
    mask_token_grans: Optional[list] = None
    mat_dims: Optional[list] = None
    img_size: int = 224
    in_channels: int = 3
    patch_size: int = 16
    num_classes: int = 1000
    use_embed_ffn: bool = False
    use_output_ffn: bool = False
    # adasearch's own metadata (preprocessing of the demo, for instance); not a reference key.
    adasearch: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return int(self.embed_dim * self.ffn_ratio)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def masked(self) -> bool:
        # The reference's attn_layer="full" drops the block mask: plain bidirectional attention.
        return self.block_mask == "block" and self.attn_layer != "full"

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["adasearch"]:
            d.pop("adasearch")
        return d


@dataclass
class ClassificationOutput:
    logits: torch.Tensor  # (B, C)
    exit_depth: torch.Tensor  # (B,) number of blocks each sample ran


@dataclass
class AnytimeOutput:
    """Readouts of one pass for every prefix granularity after every block."""

    logits: torch.Tensor  # (depth, len(prefixes), B, C)
    confidence: torch.Tensor  # (depth, len(prefixes), B): max softmax probability, float32
    prefixes: tuple  # token counts, increasing; prefixes[-1] is the pass's num_tokens


@dataclass(frozen=True)
class LayerPlan:
    """Validated, per-layer form of the knobs for one call. Lists have one entry per executed block."""

    depth: int
    tokens: tuple  # latent tokens processed in each block
    grans: tuple  # effective block boundaries in each block (ends with that block's token count)
    hidden: tuple  # FFN hidden size in each block
    taus: tuple  # exit threshold after each block, or None


# ----------------------------------------------------------------------------- RoPE and the block mask


def rope_table(num_tokens: int, head_dim: int, theta: float, max_tokens: int, device=None) -> tuple:
    """(cos, sin) tables (N, Dh) in float32, laid out for `apply_rope`: pair i's angle at 2i and 2i+1, and
    sin signed (-sin at 2i, +sin at 2i+1). Positions are linearly interpolated beyond max_tokens.

    Real tables rather than a complex one: inductor fuses them and the ONNX exporters accept them.
    For N <= max_tokens, table(N) is table(max_tokens)[:N] exactly, so the model builds the largest
    once and slices it."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if num_tokens > max_tokens:
        inv_freq = inv_freq / (num_tokens / max_tokens)
    t = torch.arange(num_tokens, device=device, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by pair i's angle (Llama convention, not rotate-half):
    (a, b) -> (a cos - b sin, b cos + a sin), written as x * cos + (x with each pair swapped) * signed sin.

    x: (B, H, N, Dh); cos, sin: (N, Dh) from rope_table. Computed in float32, returned in x's dtype.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).to(x.dtype)


def effective_grans(grans: Optional[Sequence[int]], num_tokens: int) -> tuple:
    """Block boundaries for a call with num_tokens: drop every g > N, end with N."""
    kept = [g for g in (grans or ()) if g <= num_tokens]
    if not kept or kept[-1] < num_tokens:
        kept.append(num_tokens)
    return tuple(kept)


def block_mask(grans: Sequence[int], device=None) -> Optional[torch.Tensor]:
    """Dense boolean (N, N) mask, True = may attend: a query in block b sees every key before b's end.

    grans are the effective boundaries (last one = N). One block means no mask (None).
    """
    if len(grans) == 1:
        return None
    bounds = torch.tensor(grans, device=device)
    n = grans[-1]
    pos = torch.arange(n, device=device)
    block_end = bounds[torch.searchsorted(bounds, pos, right=True)]
    return pos[None, :] < block_end[:, None]


def prefix_mask(prefixes: Sequence[int], num_tokens: int, device=None) -> Optional[torch.Tensor]:
    """(G, N) mask for G readout queries: query j sees the first prefixes[j] latents."""
    if len(prefixes) == 1 and prefixes[0] == num_tokens:
        return None
    pos = torch.arange(num_tokens, device=device)
    return pos[None, :] < torch.tensor(prefixes, device=device)[:, None]


# ----------------------------------------------------------------------------- layers


class Attention(nn.Module):
    """Multi-head attention with separate q, k, v, proj; used for self- and cross-attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor, k_rope: Optional[tuple] = None):
        k, v = self.split_heads(self.k(source)), self.split_heads(self.v(source))
        return (apply_rope(k, *k_rope) if k_rope is not None else k), v

    def attend(self, q, k, v, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # scale defaults to 1/sqrt(Dh); a boolean mask marks the entries that may attend.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, h, n, dh = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, h * dh))

    def forward(self, sink, source, q_rope=None, k_rope=None, mask=None) -> torch.Tensor:
        q = self.split_heads(self.q(sink))
        if q_rope is not None:
            q = apply_rope(q, *q_rope)
        k, v = self.keys_values(source, k_rope)
        return self.attend(q, k, v, mask)


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2. `hidden` < full keeps the first `hidden` units (Matryoshka width)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x, hidden: Optional[int] = None, hidden_mask: Optional[torch.Tensor] = None):
        if hidden is None or hidden >= self.fc1.out_features:
            h = F.gelu(self.fc1(x))
            if hidden_mask is not None:  # per-sample widths for training: masks, saves no compute
                h = h * hidden_mask
            return self.fc2(h)
        h = F.gelu(F.linear(x, self.fc1.weight[:hidden], self.fc1.bias[:hidden]))
        return F.linear(h, self.fc2.weight[:, :hidden], self.fc2.bias)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: masked self-attention with RoPE, then the Matryoshka FFN."""

    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.proj_bias)
        self.ls1 = LayerScale(d, cfg.ls_init_values) if cfg.ls_init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.ffn = Mlp(d, cfg.ffn_hidden, d)
        self.ls2 = LayerScale(d, cfg.ls_init_values) if cfg.ls_init_values else nn.Identity()

    def forward(self, x, rope, mask=None, hidden=None, hidden_mask=None):
        h = self.norm1(x)
        x = x + self.ls1(self.attn(h, h, q_rope=rope, k_rope=rope, mask=mask))
        return x + self.ls2(self.ffn(self.norm2(x), hidden, hidden_mask))


class CrossAttentionHead(nn.Module):
    """read_head / write_head: queries from the sink, keys and values from the source; no residual."""

    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        self.snk_norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.src_norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.cattn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cfg.proj_bias)

    def forward(self, sink, source, q_rope=None, k_rope=None):
        return self.cattn(self.snk_norm(sink), self.src_norm(source), q_rope=q_rope, k_rope=k_rope)


class ConvProjection(nn.Module):
    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class PatchEmbed(nn.Module):
    """Conv patches + learned positions, then (use_embed_ffn) LayerNorm and an MLP, not residual."""

    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        self.grid = cfg.grid
        self.embed = ConvProjection(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.embed_dim))
        if cfg.use_embed_ffn:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
            self.ffn = Mlp(cfg.embed_dim, cfg.ffn_hidden, cfg.embed_dim)
        else:
            self.norm = self.ffn = None

    def positions(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed
        if (h, w) == (self.grid, self.grid):
            return pos
        d = pos.shape[-1]
        grid = pos.float().reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, d).to(pos.dtype)

    def forward(self, x):
        x = self.embed.proj(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.positions(h, w)
        if self.ffn is not None:
            x = self.ffn(self.norm(x))
        return x


class LatentToken(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(*shape))


class OutputAdapter(nn.Module):
    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        if cfg.use_output_ffn:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
            self.ffn = Mlp(cfg.embed_dim, cfg.ffn_hidden, cfg.num_classes)
        else:
            self.norm = None
            self.ffn = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def forward(self, x):
        return self.ffn(self.norm(x) if self.norm is not None else x)


# ----------------------------------------------------------------------------- the model


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability in float32: the early-exit signal. One definition for every path."""
    return logits.float().softmax(-1).amax(-1)


class AdaPerceiver(nn.Module):
    """ClassificationAdaPerceiver with per-sample early exit and per-layer knobs."""

    def __init__(self, cfg: AdaPerceiverConfig):
        super().__init__()
        check_architecture(cfg)
        self.cfg = cfg
        self.process_latents = LatentToken((cfg.embed_dim,))
        self.output_latents = LatentToken((1, cfg.embed_dim))
        self.patch_embed = PatchEmbed(cfg)
        self.read_head = CrossAttentionHead(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.write_head = CrossAttentionHead(cfg)
        self.output_adapter = OutputAdapter(cfg)
        self.init_weights()
        self._build_tables()

    def init_weights(self):
        # std 1/sqrt(fan_in) keeps activations O(1) at any width; ViT's fixed 0.02 starves small models.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=m.in_features**-0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.process_latents.token, self.output_latents.token, self.patch_embed.pos_embed):
            nn.init.trunc_normal_(p, std=1.0)

    # ------------------------------------------------------------------ knobs

    def plan(self, num_tokens=None, mat_dim=None, depth=None, depth_tau=None, token_grans=None) -> LayerPlan:
        """Validate the knobs and expand each to one value per executed block."""
        return make_plan(self.cfg, num_tokens, mat_dim, depth, depth_tau, token_grans)

    # ------------------------------------------------------------------ tables

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .half(): the tables follow the model to its device and stay float32.
        out = super()._apply(fn, recurse)
        self._build_tables()
        return out

    def _build_tables(self):
        """The RoPE table of max_latent_tokens positions, on the model's device in float32. Masks (and
        RoPE tables beyond max_latent_tokens) are built on first use and kept. Plain attributes, not
        buffers: they are not in the checkpoint, and .to(bfloat16) must not round them. A forward only
        slices and looks up, so it copies no host data and compiles and captures."""
        c = self.cfg
        device = self.process_latents.token.device
        self._rope_max = rope_table(c.max_latent_tokens, c.head_dim, c.rope_theta, c.max_latent_tokens, device)
        self._tables = {}  # ("mask", grans) | ("prefix", prefixes, n) | ("rope", n) -> tensor(s)

    def _table(self, key: tuple, build):
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= MAX_TABLES:  # per-layer spaces can ask for many shapes; memory stays bounded
                self._tables.clear()
            table = self._tables[key] = build()
        return table

    def rope(self, n: int) -> tuple:
        """(cos, sin) for n latent positions: a slice of the table built once (or, beyond max_latent_tokens,
        an interpolated table built once per n)."""
        c = self.cfg
        if n <= c.max_latent_tokens:
            cos, sin = self._rope_max
            return cos[:n], sin[:n]
        device = self.process_latents.token.device
        return self._table(("rope", n), lambda: rope_table(n, c.head_dim, c.rope_theta, c.max_latent_tokens, device))

    def mask(self, grans: Sequence[int]) -> Optional[torch.Tensor]:
        """The block mask of these effective granularities (None: one block, or an unmasked model)."""
        if not self.cfg.masked or len(grans) == 1:
            return None
        grans = tuple(grans)
        return self._table(("mask", grans), lambda: block_mask(grans, self.process_latents.token.device))

    # ------------------------------------------------------------------ stages

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self.cfg, x)
        return self.patch_embed(x.to(self.patch_embed.pos_embed.dtype))

    def embed_read(self, x: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return self.read(self.embed(x), num_tokens)

    def read(self, patches: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """All latents start as one learned vector; RoPE on the queries is what makes them differ."""
        b = patches.shape[0]
        latents = self.process_latents.token.expand(b, num_tokens, -1)
        return latents + self.read_head(latents, patches, q_rope=self.rope(num_tokens))

    def run_block(self, i: int, latents, grans, hidden=None, hidden_mask=None) -> torch.Tensor:
        hidden = None if hidden == self.cfg.ffn_hidden else hidden
        return self.blocks[i](latents, self.rope(latents.shape[1]), self.mask(grans), hidden, hidden_mask)

    def readout(self, latents: torch.Tensor, prefixes: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Write + head for every prefix of the latents at once: (B, G, C), or (B, C) when prefixes is None.

        Keys and values are projected once for all prefixes; each prefix is one masked query.
        """
        n = latents.shape[1]
        wh = self.write_head
        out_q = self.output_latents.token  # (1, D)
        q = wh.cattn.split_heads(wh.cattn.q(wh.snk_norm(out_q))[None])  # (1, H, 1, Dh)
        k, v = wh.cattn.keys_values(wh.src_norm(latents), k_rope=self.rope(n))
        g = 1 if prefixes is None else len(prefixes)
        q = q.expand(latents.shape[0], -1, g, -1)
        mask = None
        if prefixes is not None:
            key = ("prefix", tuple(prefixes), n)
            mask = self._table(key, lambda: prefix_mask(prefixes, n, latents.device))
        out = out_q + wh.cattn.attend(q, k, v, mask)  # (B, G, D)
        logits = self.output_adapter(out)
        return logits[:, 0] if prefixes is None else logits

    def exit_split(self, step: torch.Tensor, tau: float) -> tuple:
        """(how many samples stop, indices of the samples going on, of those stopping) after an exit check
        whose readout is `step`. The count is the check's one host sync; a stable sort splits the batch
        without another (boolean indexing would sync again), keeping the samples' order."""
        done = confidence(step) >= tau
        stopped = int(done.sum())
        if stopped == 0:
            return 0, None, None
        order = torch.argsort(done.to(torch.uint8), stable=True)
        going = len(order) - stopped
        return stopped, order[:going], order[going:]

    # ------------------------------------------------------------------ forwards

    def forward(self, x, num_tokens=None, mat_dim=None, depth=None, depth_tau=None, token_grans=None):
        plan = self.plan(num_tokens, mat_dim, depth, depth_tau, token_grans)
        return self.forward_plan(x, plan)

    def run(self, x, config) -> ClassificationOutput:
        """Forward under a DeploymentConfig (adasearch.config)."""
        return self.forward(x, **config.to_dict())

    def forward_plan(self, x, plan: LayerPlan, parts=None) -> ClassificationOutput:
        """A static plan (no exit threshold before the last block) runs with no host sync and no table
        building once its tables are warm: it compiles with no graph break and captures in a CUDA graph.
        With per-sample exit, each exit check syncs once (how many samples stop); blocks between checks
        stay sync-free.

        parts: what runs embed_read, run_block and readout (default: this model, eagerly); a runtime passes
        its compiled or captured parts (adasearch/runtimes.py), and the exit checks stay here."""
        parts = self if parts is None else parts
        latents = parts.embed_read(x, plan.tokens[0])
        b = latents.shape[0]
        logits = active = None
        exit_depth = torch.full((b,), plan.depth, dtype=torch.long, device=latents.device)
        for i in range(plan.depth):
            latents = parts.run_block(i, latents[:, : plan.tokens[i]], plan.grans[i], plan.hidden[i])
            tau = plan.taus[i]
            if tau is None or i == plan.depth - 1:
                continue
            step = parts.readout(latents)
            stopped, going, leaving = self.exit_split(step, tau)
            if not stopped:
                continue
            if logits is None:  # the first stop: from here on, `active` maps rows to the batch's samples
                logits = step.new_zeros(b, step.shape[-1])
                active = torch.arange(b, device=latents.device)
            logits[active[leaving]] = step[leaving]
            exit_depth[active[leaving]] = i + 1
            if going.numel() == 0:
                return ClassificationOutput(logits, exit_depth)
            latents, active = latents[going], active[going]
        final = parts.readout(latents)
        if logits is None:
            return ClassificationOutput(final, exit_depth)
        logits[active] = final
        return ClassificationOutput(logits, exit_depth)

    def anytime(
        self,
        x,
        num_tokens=None,
        mat_dim=None,
        depth=None,
        token_grans=None,
        sample_mat_dim: Optional[torch.Tensor] = None,
    ) -> AnytimeOutput:
        """One pass at num_tokens; logits for every prefix granularity after every block.

        By the prefix property, prefix g's readout after block l equals a separate forward with
        num_tokens=g, depth=l (same widths and granularities). The prefixes are the boundaries that
        every executed block shares. sample_mat_dim (B,) gives each sample its own width by masking,
        as in training; it saves no compute.
        """
        plan = self.plan(num_tokens, mat_dim, depth, None, token_grans)
        n = plan.tokens[0]
        if any(t != n for t in plan.tokens):
            raise KnobError("anytime pass needs one num_tokens for all layers; got a per-layer schedule")
        if n > self.cfg.max_latent_tokens:
            raise KnobError(f"anytime pass needs num_tokens <= max_latent_tokens={self.cfg.max_latent_tokens}")
        prefixes = tuple(sorted(set.intersection(*(set(g) for g in plan.grans)))) if self.cfg.masked else (n,)
        latents = self.read(self.embed(x), n)
        hidden_mask = None
        if sample_mat_dim is not None:
            widths = (sample_mat_dim.to(latents.device).float() * self.cfg.ffn_ratio).floor()
            hidden_mask = torch.arange(self.cfg.ffn_hidden, device=latents.device) < widths[:, None]
            hidden_mask = hidden_mask[:, None, :].to(latents.dtype)
        per_block = []
        for i in range(plan.depth):
            latents = self.run_block(i, latents, plan.grans[i], plan.hidden[i], hidden_mask)
            per_block.append(self.readout(latents, prefixes).transpose(0, 1))  # (G, B, C)
        logits = torch.stack(per_block)
        return AnytimeOutput(logits, confidence(logits), prefixes)


# ----------------------------------------------------------------------------- validation


def check_architecture(cfg: AdaPerceiverConfig):
    from adasearch.errors import CheckpointError

    supported = {
        "act_layer": ("gelu",),
        "norm_layer": ("layernorm",),
        "ffn_layer": ("mlp",),
        "process_token_init": ("learned",),
        "block_mask": ("block", "none", None),
    }
    for key, allowed in supported.items():
        if getattr(cfg, key) not in allowed:
            raise CheckpointError(f"config key {key}={getattr(cfg, key)!r} is not supported: allowed {list(allowed)}")
    if cfg.embed_dim % cfg.num_heads:
        raise CheckpointError(f"config key num_heads={cfg.num_heads} must divide embed_dim={cfg.embed_dim}")
    if cfg.head_dim % 2:
        raise CheckpointError(f"head dim embed_dim/num_heads={cfg.head_dim} must be even for RoPE")


def check_input(cfg: AdaPerceiverConfig, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"input must be a torch.Tensor of shape (B, {cfg.in_channels}, H, W); got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != cfg.in_channels:
        raise InputError(
            f"input shape {tuple(x.shape)} is not allowed: expected (B, {cfg.in_channels}, H, W) "
            f"with {cfg.in_channels} channel(s)"
        )
    h, w = x.shape[-2:]
    p = cfg.patch_size
    if h % p or w % p or h < p or w < p:
        raise InputError(
            f"image size {h}x{w} is not allowed: height and width must be positive multiples of "
            f"patch_size={p} (the model was trained at {cfg.img_size}x{cfg.img_size})"
        )


def _per_layer(name: str, value, L: int, scalar_ok, describe: str) -> list:
    """Expand a scalar or a list of L values to L values; every error names the knob and what is allowed."""
    if isinstance(value, (list, tuple)):
        if len(value) != L:
            raise KnobError(f"{name} has {len(value)} values; a per-layer {name} needs exactly depth={L} values")
        values = list(value)
    else:
        values = [value] * L
    for v in values:
        if not scalar_ok(v):
            raise KnobError(f"{name}={v!r} is not allowed: {describe}")
    return values


def make_plan(
    cfg: AdaPerceiverConfig, num_tokens=None, mat_dim=None, depth=None, depth_tau=None, token_grans=None
) -> LayerPlan:
    L = cfg.depth
    max_tokens = 16 * cfg.max_latent_tokens
    if depth is None:
        d = L
    elif is_int(depth) and 1 <= depth <= L:
        d = depth
    else:
        raise KnobError(f"depth={depth!r} is not allowed: an integer 1..{L}")

    n0 = cfg.max_latent_tokens if num_tokens is None else num_tokens
    tokens = _per_layer(
        "num_tokens",
        n0,
        L,
        lambda v: is_int(v) and 1 <= v <= max_tokens,
        f"an integer 1..{max_tokens}, or a non-increasing list of {L} such integers",
    )
    if any(b > a for a, b in zip(tokens, tokens[1:])):
        raise KnobError(f"num_tokens schedule {list(tokens)} is not allowed: it must be non-increasing")

    widths = _per_layer(
        "mat_dim",
        mat_dim,
        L,
        lambda v: v is None or (is_int(v) and 1 <= v <= cfg.embed_dim),
        f"None (full width) or an integer 1..{cfg.embed_dim}, globally or one per layer",
    )
    hidden = [cfg.ffn_hidden if w is None else max(1, int(w * cfg.ffn_ratio)) for w in widths]

    taus = _per_layer(
        "depth_tau",
        depth_tau,
        L,
        lambda v: v is None or (is_number(v) and 0.0 <= v <= 1.0),
        "None (no exit) or a number in [0, 1], globally or one per layer",
    )
    taus = [None if t is None else float(t) for t in taus]

    base = cfg.mask_token_grans if token_grans is None else token_grans
    if base is not None and not isinstance(base, (list, tuple)):
        raise KnobError(
            f"token_grans={base!r} is not allowed: None, a strictly increasing list of positive "
            f"integers, or one such list per layer"
        )
    if base is not None and len(base) and all(isinstance(g, (list, tuple)) for g in base):
        if len(base) != L:
            raise KnobError(f"token_grans has {len(base)} lists; per-layer token_grans needs depth={L} lists")
        layer_grans = list(base)
    else:
        layer_grans = [base] * L
    for g in layer_grans:
        if g is None:
            continue
        if (
            not isinstance(g, (list, tuple))
            or not all(is_int(v) and v >= 1 for v in g)
            or any(b <= a for a, b in zip(g, g[1:]))
        ):
            raise KnobError(f"token_grans={list(g)!r} is not allowed: a strictly increasing list of positive integers")
    grans = [effective_grans(layer_grans[i], tokens[i]) for i in range(d)]
    return LayerPlan(d, tuple(tokens[:d]), tuple(grans), tuple(hidden[:d]), tuple(taus[:d]))
