"""A deliberately plain forward written from the reference facts, for cross-checking the model.

Loops and explicit formulas instead of the model's helpers: RoPE rotates (x[2i], x[2i+1]) by
t * theta^(-2i/Dh) with cos/sin; the mask is built query by query from the block rule.
"""

import math

import torch


def ln(x, sd, prefix):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-6)


def lin(x, sd, prefix, rows=None, cols=None):
    w, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
    if rows is not None:
        w, b = w[:rows], b[:rows]
    if cols is not None:
        w = w[:, :cols]
    return x @ w.T + b


def rope(x, theta=10000.0):
    """x (B, H, N, Dh): rotate each interleaved pair by t * theta^(-2i/Dh)."""
    out = x.clone()
    n, dh = x.shape[-2], x.shape[-1]
    for t in range(n):
        for i in range(dh // 2):
            a = t * theta ** (-2 * i / dh)
            x0, x1 = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = x0 * math.cos(a) - x1 * math.sin(a)
            out[..., t, 2 * i + 1] = x0 * math.sin(a) + x1 * math.cos(a)
    return out


def mask_from_rule(grans, n):
    grans = [g for g in grans if g <= n]
    if not grans or grans[-1] < n:
        grans.append(n)
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        end = next(g for g in grans if q < g)  # the end of q's block
        m[q, :end] = True
    return m


def attention(xq, xkv, sd, prefix, heads, rope_q=False, rope_k=False, mask=None):
    b, nq, d = xq.shape
    dh = d // heads

    def split(t):
        return t.reshape(b, t.shape[1], heads, dh).transpose(1, 2)

    q, k, v = split(lin(xq, sd, prefix + ".q")), split(lin(xkv, sd, prefix + ".k")), split(lin(xkv, sd, prefix + ".v"))
    if rope_q:
        q = rope(q)
    if rope_k:
        k = rope(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, nq, d)
    return lin(out, sd, prefix + ".proj")


def forward(sd, cfg, x, num_tokens, depth, mat_dim=None):
    heads = cfg.num_heads
    gelu = torch.nn.functional.gelu
    p = torch.nn.functional.conv2d(
        x, sd["patch_embed.embed.proj.weight"], sd["patch_embed.embed.proj.bias"], stride=cfg.patch_size
    )
    p = p.flatten(2).transpose(1, 2) + sd["patch_embed.pos_embed"]
    p = lin(gelu(lin(ln(p, sd, "patch_embed.norm"), sd, "patch_embed.ffn.fc1")), sd, "patch_embed.ffn.fc2")
    z = sd["process_latents.token"].expand(x.shape[0], num_tokens, -1)
    z = z + attention(
        ln(z, sd, "read_head.snk_norm"), ln(p, sd, "read_head.src_norm"), sd, "read_head.cattn", heads, rope_q=True
    )
    mask = mask_from_rule(list(cfg.mask_token_grans), num_tokens)
    m = cfg.ffn_hidden if mat_dim is None else int(mat_dim * cfg.ffn_ratio)
    for i in range(depth):
        b = f"blocks.{i}"
        h = ln(z, sd, b + ".norm1")
        z = z + sd[b + ".ls1.gamma"] * attention(h, h, sd, b + ".attn", heads, True, True, mask)
        h = gelu(lin(ln(z, sd, b + ".norm2"), sd, b + ".ffn.fc1", rows=m))
        z = z + sd[b + ".ls2.gamma"] * lin(h, sd, b + ".ffn.fc2", cols=m)
    q = sd["output_latents.token"].expand(x.shape[0], 1, -1)
    out = q + attention(
        ln(q, sd, "write_head.snk_norm"), ln(z, sd, "write_head.src_norm"), sd, "write_head.cattn", heads, rope_k=True
    )
    return lin(out, sd, "output_adapter.ffn")[:, 0]
