"""The shape of the released IN-1K checkpoint (pjajal/adaperceiver-v1-in1k-ft), as published.

For benchmarks and tests at the real size without its weights: building an AdaPerceiver from it gives
random weights of the released shape (86 M parameters). patch_size 16 is the reference's figure; a
loaded checkpoint's own config.json and weight shapes always win.
"""

from adasearch.model.adaperceiver import AdaPerceiverConfig

RELEASED_IN1K = dict(
    embed_dim=832, num_heads=13, depth=21, max_latent_tokens=256, ffn_ratio=2.57, ls_init_values=1e-6,
    mask_token_grans=[32, 64, 96, 128, 192, 256], mat_dims=[416, 624, 832], img_size=224, patch_size=16,
    num_classes=1000, use_embed_ffn=True,
)  # fmt: skip


def released_in1k_config(**overrides) -> AdaPerceiverConfig:
    return AdaPerceiverConfig(**{**RELEASED_IN1K, **overrides})
