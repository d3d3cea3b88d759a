"""DeploymentConfig: frozen, hashable, YAML/JSON round-trip, reference kwargs, model.run."""

import dataclasses

import pytest
import torch

from adasearch import DeploymentConfig
from adasearch.errors import KnobError, UserError
from tests.helpers import random_model


def test_round_trips_and_hashes():
    c = DeploymentConfig(
        num_tokens=[16, 8, 8, 8],
        mat_dim=[32, 24, 24, 16],
        depth=4,
        depth_tau=[None, 0.5, 0.5, 0.9],
        token_grans=[2, 4, 8, 16],
    )
    assert DeploymentConfig.from_yaml(c.to_yaml()) == c
    assert DeploymentConfig.from_json(c.to_json()) == c
    assert len({c, DeploymentConfig.from_json(c.to_json())}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.depth = 3  # frozen
    assert DeploymentConfig(depth_tau=1) == DeploymentConfig(depth_tau=1.0)


def test_reference_kwargs_only_for_global_configs():
    assert DeploymentConfig(num_tokens=64, mat_dim=624, depth=12).reference_kwargs() == dict(
        num_tokens=64, token_grans=None, mat_dim=624, depth=12, depth_tau=None
    )
    with pytest.raises(KnobError, match="per-layer"):
        DeploymentConfig(mat_dim=[416, 832]).reference_kwargs()
    with pytest.raises(KnobError, match="ignores depth"):
        DeploymentConfig(depth=8, depth_tau=0.9).reference_kwargs()


def test_run_equals_forward_with_the_kwargs(images):
    model = random_model()
    c = DeploymentConfig(num_tokens=8, mat_dim=24, depth=3)
    with torch.no_grad():
        assert torch.equal(model.run(images, c).logits, model(images, num_tokens=8, mat_dim=24, depth=3).logits)


def test_validate_names_the_knob():
    model = random_model()
    with pytest.raises(KnobError, match="mat_dim=999"):
        DeploymentConfig(mat_dim=999).validate(model.cfg)


def test_bad_files(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text("num_tokens: [1, 2\n")
    with pytest.raises(UserError, match="malformed YAML"):
        DeploymentConfig.load(bad)
    bad.write_text("tokens: 8\n")
    with pytest.raises(UserError, match="unknown key 'tokens'"):
        DeploymentConfig.load(bad)
    with pytest.raises(UserError, match="no such deployment config"):
        DeploymentConfig.load(tmp_path / "missing.yaml")
