"""Train the demo AdaPerceiver on sklearn digits with the joint (anytime) regime.

Every step reads out at every prefix granularity after every block (one anytime pass) and draws a
random trained width per sample, so one set of weights serves every tokens x depth x width config.
Deeper readouts weigh more in the loss (DEPTH_WEIGHT_POWER), so depth buys accuracy too.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from adasearch.data.digits import digits
from adasearch.model.adaperceiver import AdaPerceiver, AdaPerceiverConfig
from adasearch.model.loading import save_model

# Why these choices: with the published embedding MLP even a 1-token, 1-block config solves digits
# (every config ~95%), so the demo would show no trade-off. Without it, and at D=32, the blocks' FFNs
# carry the nonlinearity and tokens, depth and width visibly buy accuracy.
DEMO_CONFIG = dict(
    embed_dim=32,
    num_heads=4,
    depth=6,
    max_latent_tokens=32,
    ffn_ratio=2.0,
    mask_token_grans=[1, 2, 4, 8, 16, 32],
    mat_dims=[8, 16, 32],
    img_size=8,
    patch_size=2,
    in_channels=1,
    num_classes=10,
    use_embed_ffn=False,
    use_output_ffn=False,
    ls_init_values=0.1,
    attn_layer="sdpa",
    adasearch={"dataset": "digits", "trained_by": "adasearch train-demo"},
)
DEFAULT_EPOCHS = 45
# Why the readout after block d is weighted by d**1.5: with equal weights, block 1 learns to solve
# digits alone and later blocks add nothing (top-1 was flat in depth, so early exit had nothing to
# trade). Leaning the loss towards deeper readouts keeps every readout trained while giving the deep
# ones reason to improve: mean top-1 now rises with depth. (Tried and dropped: 1-pixel shift
# augmentation and D=16, both below 0.90 at the full config.)
DEPTH_WEIGHT_POWER = 1.5


def train_demo(
    out_dir, epochs: int = DEFAULT_EPOCHS, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress=None
) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = AdaPerceiverConfig(**DEMO_CONFIG)
    model = AdaPerceiver(cfg)
    x_train, y_train = digits("train")
    widths = torch.tensor(cfg.mat_dims)
    depth_weights = torch.arange(1, cfg.depth + 1, dtype=torch.float32) ** DEPTH_WEIGHT_POWER
    depth_weights = depth_weights / depth_weights.sum()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total = epochs * steps_per_epoch
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            xb, yb = x_train[idx], y_train[idx]
            sample_width = widths[torch.randint(len(widths), (len(idx),), generator=gen)]
            out = model.anytime(xb, sample_mat_dim=sample_width)  # logits (depth, G, B, C)
            d, g, b, c = out.logits.shape
            # every depth x every prefix granularity, each sample at its own width: the joint regime
            per_readout = F.cross_entropy(out.logits.reshape(-1, c), yb.repeat(d * g), reduction="none")
            per_readout = per_readout.view(d, g, b).mean(-1)  # (depth, G)
            loss = (per_readout * depth_weights[:, None]).sum() / g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        if progress:
            progress(epoch + 1, epochs, loss.item())
    model.eval()
    save_model(model, out_dir)
    return {"epochs": epochs, "seconds": time.time() - start, "final_loss": loss.item()}


@torch.no_grad()
def accuracy_table(model: AdaPerceiver, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Top-1 on (x, y) for every trained width x prefix granularity x depth, from anytime passes."""
    table = {}
    for w in model.cfg.mat_dims or [model.cfg.embed_dim]:
        out = model.anytime(x, mat_dim=w)
        correct = (out.logits.argmax(-1) == y).float().mean(-1)  # (depth, G)
        for di in range(correct.shape[0]):
            for gi, g in enumerate(out.prefixes):
                table[(g, di + 1, w)] = correct[di, gi].item()
    return table


def format_accuracy_table(model: AdaPerceiver) -> str:
    """Markdown: held-out top-1 per token count x depth at each trained width (the README's table)."""
    x, y = digits("val")
    t = accuracy_table(model, x, y)
    cfg = model.cfg
    grans = sorted({g for g, _, _ in t})
    lines = []
    for w in cfg.mat_dims or [cfg.embed_dim]:
        lines.append(f"\nwidth (mat_dim) {w}, top-1 on the {len(y)} held-out digits:\n")
        lines.append("| tokens \\ depth | " + " | ".join(str(d) for d in range(1, cfg.depth + 1)) + " |")
        lines.append("|---|" + "---|" * cfg.depth)
        for g in grans:
            lines.append(f"| {g} | " + " | ".join(f"{t[(g, d, w)]:.3f}" for d in range(1, cfg.depth + 1)) + " |")
    by_depth = [statistics.mean(v for (_, d, _), v in t.items() if d == depth) for depth in range(1, cfg.depth + 1)]
    lines.append(
        "\nmean top-1 over every tokens x width, by depth: "
        + ", ".join(f"{d}: {m:.3f}" for d, m in enumerate(by_depth, 1))
    )
    return "\n".join(lines)
