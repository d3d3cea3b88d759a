"""The network: reference semantics, the prefix property, per-sample exit, per-layer knobs."""

import pytest
import torch

from adasearch.errors import InputError, KnobError
from adasearch.model.adaperceiver import apply_rope, block_mask, rope_table
from tests import naive_reference
from tests.helpers import random_model

torch.set_grad_enabled(False)


def test_rope_rotates_interleaved_pairs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    ours = apply_rope(x, *rope_table(5, 8, 10000.0, 256))
    assert torch.allclose(ours, naive_reference.rope(x), atol=1e-5)
    # The rotate-half convention pairs (x[i], x[i + Dh/2]) instead; it must be told apart.
    t = torch.arange(5.0)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    x1, x2 = x[..., :4], x[..., 4:]
    rotate_half = torch.cat([x1 * t.cos() - x2 * t.sin(), x1 * t.sin() + x2 * t.cos()], -1)
    assert not torch.allclose(ours, rotate_half, atol=1e-3)


def test_rope_interpolates_positions_beyond_max():
    plain_cos, plain_sin = rope_table(8, 4, 10000.0, max_tokens=8)
    cos, sin = rope_table(16, 4, 10000.0, max_tokens=8)  # 16/8 = 2: every frequency halved
    assert torch.allclose(cos[2], plain_cos[1], atol=1e-6) and torch.allclose(sin[2], plain_sin[1], atol=1e-6)


def test_rope_tables_are_slices_of_the_largest():
    # Why the model builds one table and slices it: table(n) equals table(max)[:n] to the bit.
    big_cos, big_sin = rope_table(256, 64, 10000.0, 256)
    for n in (1, 7, 32, 255):
        cos, sin = rope_table(n, 64, 10000.0, 256)
        assert torch.equal(cos, big_cos[:n]) and torch.equal(sin, big_sin[:n])


def test_block_mask_follows_the_block_rule():
    m = block_mask((2, 4, 8))
    assert torch.equal(m, naive_reference.mask_from_rule([2, 4, 8], 8))
    assert m[1, 1] and not m[1, 2]  # block 0 never sees block 1
    assert m[2, 3] and not m[3, 4]  # block 1 sees blocks 0..1 only
    assert m[7].all()
    assert block_mask((8,)) is None  # one block: plain attention


@pytest.mark.parametrize("tokens,depth,mat_dim", [(16, 4, None), (8, 2, 24), (6, 3, 16)])
def test_matches_naive_reference(model, images, tokens, depth, mat_dim):
    sd = model.state_dict()
    ours = model(images, num_tokens=tokens, depth=depth, mat_dim=mat_dim).logits
    ref = naive_reference.forward(sd, model.cfg, images, tokens, depth, mat_dim)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_prefix_property(model, images):
    """A run with g tokens (g a boundary) equals the write over the first g latents of a larger run."""
    full_latents = model.read(model.embed(images), 16)
    small_latents = model.read(model.embed(images), 8)
    plan16, plan8 = model.plan(num_tokens=16), model.plan(num_tokens=8)
    for i in range(model.cfg.depth):
        full_latents = model.run_block(i, full_latents, plan16.grans[i], plan16.hidden[i])
        small_latents = model.run_block(i, small_latents, plan8.grans[i], plan8.hidden[i])
        assert torch.allclose(full_latents[:, :8], small_latents, atol=1e-5)
    assert torch.allclose(model.readout(full_latents[:, :8]), model(images, num_tokens=8).logits, atol=1e-5)


def test_prefix_property_needs_a_block_boundary(model, images):
    """N=6 with granularities [2,4,8,16]: its last block is [4,6), which in a 16-token run is [4,8)."""
    a = model.anytime(images, num_tokens=16)
    assert 6 not in a.prefixes
    six = model(images, num_tokens=6).logits
    latents = model.read(model.embed(images), 16)
    for i in range(model.cfg.depth):
        latents = model.run_block(i, latents, model.plan(num_tokens=16).grans[i])
    assert not torch.allclose(model.readout(latents[:, :6]), six, atol=1e-4)


def test_unmasked_attention_breaks_the_prefix_property(images):
    unmasked = random_model(attn_layer="full")
    a = unmasked.anytime(images, num_tokens=16)
    assert a.prefixes == (16,)
    latents = unmasked.read(unmasked.embed(images), 16)
    for i in range(unmasked.cfg.depth):
        latents = unmasked.run_block(i, latents, (2, 4, 8, 16))
    assert not torch.allclose(unmasked.readout(latents[:, :8]), unmasked(images, num_tokens=8).logits, atol=1e-4)


def test_default_knobs_mean_full_model(model, images):
    full = model(images).logits
    assert torch.allclose(model(images, mat_dim=model.cfg.embed_dim).logits, full)
    assert torch.allclose(model(images, depth=model.cfg.depth).logits, full)
    assert torch.allclose(model(images, num_tokens=model.cfg.max_latent_tokens).logits, full)
    assert full.shape == (6, model.cfg.num_classes)


def test_width_slices_the_ffn_hidden_units(model, images):
    """mat_dim=w must equal the full model with FFN hidden units >= int(w*ratio) zeroed."""
    m = int(16 * model.cfg.ffn_ratio)
    sliced = model(images, mat_dim=16).logits
    zeroed = random_model()
    with torch.no_grad():
        for blk in zeroed.blocks:
            blk.ffn.fc1.weight[m:] = 0
            blk.ffn.fc1.bias[m:] = 0  # GELU(0) = 0, so these units add nothing
    assert torch.allclose(zeroed(images).logits, sliced, atol=1e-5)
    assert not torch.allclose(model(images).logits, sliced, atol=1e-4)


def test_anytime_equals_separate_forwards(model, images):
    for w in (None, 16):
        a = model.anytime(images, mat_dim=w)
        assert a.logits.shape == (4, 4, 6, 7) and a.prefixes == (2, 4, 8, 16)
        for d in range(1, 5):
            for gi, g in enumerate(a.prefixes):
                direct = model(images, num_tokens=g, depth=d, mat_dim=w).logits
                assert torch.allclose(a.logits[d - 1, gi], direct, atol=1e-5)
        assert torch.allclose(a.confidence, a.logits.softmax(-1).amax(-1))


def test_per_sample_exit_equals_batch_of_one(model, images):
    conf = model.anytime(images).confidence[:, -1]  # (depth, B) at full tokens
    first = conf[0].sort().values
    tau = ((first[2] + first[3]) / 2).item()  # half the samples exit after block 1, the rest later
    batch = model(images, depth_tau=tau)
    assert 1 < len(set(batch.exit_depth.tolist()))  # the batch really is mixed
    for i in range(len(images)):
        single = model(images[i : i + 1], depth_tau=tau)
        assert single.exit_depth.item() == batch.exit_depth[i].item()
        assert torch.allclose(single.logits[0], batch.logits[i], atol=1e-5)
    # each sample's exit is its first block whose own confidence reaches tau
    for i in range(len(images)):
        reached = (conf[:-1, i] >= tau).nonzero()
        expected = reached[0].item() + 1 if len(reached) else model.cfg.depth
        assert batch.exit_depth[i].item() == expected


def test_uniform_per_layer_knobs_equal_scalars(model, images):
    L = model.cfg.depth
    ref = model(images, num_tokens=8, mat_dim=24, depth_tau=0.3, token_grans=[2, 4, 8]).logits
    per_layer = model(
        images, num_tokens=[8] * L, mat_dim=[24] * L, depth_tau=[0.3] * L, token_grans=[[2, 4, 8]] * L
    ).logits
    assert torch.allclose(ref, per_layer)


def test_token_schedule_ending_on_a_boundary_equals_constant_count(model, images):
    L = model.cfg.depth
    assert torch.allclose(
        model(images, num_tokens=[16, 16, 8, 4]).logits, model(images, num_tokens=4).logits, atol=1e-5
    )
    mixed = model(images, mat_dim=[32, 24, 16, 32]).logits
    assert not torch.allclose(mixed, model(images).logits, atol=1e-4)
    assert mixed.shape == (6, 7) and L == 4


def test_pos_embed_resizes_for_another_image_size(model):
    out = model(torch.randn(2, 3, 32, 24)).logits
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(num_tokens=0), "num_tokens=0"),
        (dict(num_tokens="8"), "num_tokens='8'"),
        (dict(num_tokens=[8, 16, 16, 16]), "non-increasing"),
        (dict(mat_dim=99), "mat_dim=99"),
        (dict(depth=0), "depth=0"),
        (dict(depth=5), "1..4"),
        (dict(depth_tau=1.5), "depth_tau=1.5"),
        (dict(depth_tau=float("nan")), "depth_tau=nan"),
        (dict(mat_dim=[16, 16]), "exactly depth=4"),
        (dict(token_grans=[4, 2]), "strictly increasing"),
        (dict(depth=True), "depth=True"),
    ],
)
def test_bad_knobs_name_the_value(model, images, kwargs, needle):
    with pytest.raises(KnobError, match=needle.replace("[", r"\[")):
        model(images, **kwargs)


@pytest.mark.parametrize(
    "shape,needle",
    [((2, 1, 16, 16), "3 channel"), ((2, 3, 18, 16), "multiples of patch_size=4"), ((3, 16, 16), "expected")],
)
def test_bad_inputs(model, shape, needle):
    with pytest.raises(InputError, match=needle):
        model(torch.randn(*shape))
