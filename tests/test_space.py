"""Search spaces: size, granularities, validation against the model, and canonical forms."""

import random

import pytest
import torch

from adasearch import DeploymentConfig
from adasearch.data.digits import digits
from adasearch.errors import UserError
from adasearch.search.space import SearchSpace, canonical, stage_sizes
from tests.helpers import IN1K


def test_ready_spaces_load_and_know_their_size(demo):
    assert SearchSpace.load("demo", demo.cfg).size() == 6 * 6 * 3 * 5
    assert SearchSpace.load("in1k", IN1K).size() == 6 * 21 * 3 * 7
    stages = SearchSpace.load("in1k-stages", IN1K)
    assert stages.size() == 6 * 3 * 3**3 * 4**3
    assert [p for p, _ in stages.parameters()][2:5] == ["mat_dim.s0", "mat_dim.s1", "mat_dim.s2"]


def test_per_stage_and_per_layer_expand_to_layers(tmp_path, demo):
    f = tmp_path / "s.yaml"
    f.write_text(
        "knobs:\n  mat_dim: {values: [8, 32], granularity: per_stage, stages: 4}\n"
        "  num_tokens: {values: [4, 32], granularity: per_layer}\n"
    )
    space = SearchSpace.load(f, demo.cfg)
    assert stage_sizes(6, 4) == [2, 2, 1, 1]
    assert space.size() == 2**4 * 2**6
    params = {
        "mat_dim.s0": 8,
        "mat_dim.s1": 32,
        "mat_dim.s2": 8,
        "mat_dim.s3": 32,
        **{f"num_tokens.l{i}": v for i, v in enumerate([32, 4, 32, 32, 4, 4])},
    }
    c = space.config_from_params(params)
    assert c.mat_dim == (8, 8, 32, 32, 8, 32)
    assert c.num_tokens == (32, 4, 4, 4, 4, 4)  # running minimum: tokens can only be dropped


def test_per_stage_token_grans_may_keep_the_checkpoints_granularities(tmp_path, demo):
    """null in a per-stage token_grans list means the checkpoint's own granularities for that stage."""
    f = tmp_path / "s.yaml"
    f.write_text(
        "knobs:\n  num_tokens: [8]\n  token_grans: {values: [null, [4, 8]], granularity: per_stage, stages: 2}\n"
    )
    configs = list(SearchSpace.load(f, demo.cfg).unique())
    assert len(configs) == 4
    x = digits("val")[0][:32]
    with torch.inference_mode():
        for c in configs:
            assert demo.run(x, c).logits.shape == (32, 10)
            assert DeploymentConfig.from_yaml(c.to_yaml()) == c  # deployment files round-trip
    mixed = [c for c in configs if c.token_grans and isinstance(c.token_grans[0], tuple)]
    assert len(mixed) == 2 and all(tuple(demo.cfg.mask_token_grans) in c.token_grans for c in mixed)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("knobs:\n  num_tokens: [8, 64]\n", "value 64 does not fit the model; allowed: integers 1..32"),
        ("knobs:\n  mat_dim: [8, 48]\n", "knobs.mat_dim: value 48"),
        ("knobs:\n  depth: {range: [1, 9]}\n", "value 7 does not fit the model; allowed: integers 1..6"),
        ("knobs:\n  depth_tau: [0.5, 2]\n", "value 2 does not fit"),
        ("knobs:\n  widths: [8]\n", "unknown knob 'widths'"),
        ("knobs:\n  mat_dim: {values: [8], granularity: per_block}\n", "granularity: 'per_block' is not allowed"),
        ("knobs: [1, 2\n", "malformed YAML"),
    ],
)
def test_spaces_that_do_not_fit_the_model(tmp_path, demo, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        SearchSpace.load(f, demo.cfg)


def test_canonical_forms(demo):
    cfg = demo.cfg
    c = lambda **kw: canonical(DeploymentConfig(**kw), cfg)  # noqa: E731
    assert c(num_tokens=32, mat_dim=32, depth=6) == DeploymentConfig()  # defaults
    assert c(depth=1, depth_tau=0.9) == c(depth=1)  # no check runs after the last block
    assert c(num_tokens=[32, 32, 16, 16, 8, 8]) == c(num_tokens=8)  # schedule ending on a boundary
    assert c(num_tokens=[32, 32, 16, 16, 8, 8], depth_tau=0.9) != c(num_tokens=8, depth_tau=0.9)
    assert c(mat_dim=[16] * 6, depth_tau=[0.9] * 6) == c(mat_dim=16, depth_tau=0.9)
    assert c(depth_tau=[None, 0.0, 0.5, 0.5, 0.5, 0.5]) == c(depth=2)  # tau 0 always fires
    assert c(depth=3, mat_dim=[8, 8, 8, 32, 32, 32]) == c(depth=3, mat_dim=8)  # unexecuted layers ignored
    assert len(SearchSpace.load("demo", cfg).unique()) == 540 - 6 * 3 * 4  # depth 1 ignores the 4 thresholds


def test_canonical_configs_give_identical_predictions(demo):
    """Canonicalisation may only merge configs that really are the same network."""
    rng = random.Random(0)
    x = digits("val")[0][:80]
    L = demo.cfg.depth
    for _ in range(40):
        schedule = sorted([rng.choice([1, 2, 4, 8, 16, 32]) for _ in range(L)], reverse=True)
        cfg = DeploymentConfig(
            num_tokens=rng.choice([schedule, schedule[-1], 32]),
            mat_dim=rng.choice([None, 8, 16, [rng.choice([8, 16, 32]) for _ in range(L)]]),
            depth=rng.choice([None, 1, 2, 4]),
            depth_tau=rng.choice([None, 0.0, 0.9, [rng.choice([None, 0.8, 0.95]) for _ in range(L)]]),
        )
        canon = canonical(cfg, demo.cfg)
        with torch.inference_mode():
            a, b = demo.run(x, cfg), demo.run(x, canon)
        assert torch.equal(a.logits.argmax(-1), b.logits.argmax(-1)), (cfg, canon)
        assert torch.equal(a.exit_depth, b.exit_depth), (cfg, canon)
