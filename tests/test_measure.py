"""Accuracy engine (shared anytime pass vs direct forwards), its disk cache, and FLOP counting."""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adasearch import DeploymentConfig, load_model
from adasearch.data.datasets import load_data
from adasearch.measure.accuracy import AccuracyEngine
from adasearch.measure.closed_form_macs import CostModel, plan_macs
from adasearch.measure.fvcore_macs import FvcoreStages
from tests.helpers import random_model


@pytest.fixture(scope="module")
def data():
    return load_data("digits", limit=150)


def _direct_predictions(model, data, config):
    with torch.inference_mode():
        return torch.cat([model.run(x, config).logits.argmax(-1) for x, _ in data.batches(64)])


def test_shared_equals_direct_for_the_demo_grid(demo, data, tmp_path):
    grid = [
        DeploymentConfig(num_tokens=n, depth=d, mat_dim=w, depth_tau=t)
        for n, d, w, t in itertools.product([1, 2, 4, 8, 16, 32], range(1, 7), [8, 16, 32], [None, 0.9, 0.99])
    ]
    L = demo.cfg.depth
    grid += [
        DeploymentConfig(num_tokens=[32, 32, 16, 16, 8, 8], depth_tau=[None, 0.95, 0.95, 0.9, 0.9, 0.9]),
        DeploymentConfig(mat_dim=[32, 32, 16, 16, 8, 8], depth_tau=0.95),
        DeploymentConfig(token_grans=[[4, 16, 32]] * L, num_tokens=16),
    ]
    engine = AccuracyEngine(demo, data, batch_size=64, cache_dir=tmp_path)
    results = engine.measure(grid, keep_predictions=True)
    assert all(r.shared for r in results.values())
    y = torch.cat([y for _, y in data.batches(64)])
    exits_seen = set()
    for c in grid:
        direct = _direct_predictions(demo, data, c)
        assert torch.equal(results[c].predictions, direct), c
        assert results[c].top1 == pytest.approx((direct == y).float().mean().item())
        assert sum(results[c].exit_fractions) == pytest.approx(1.0)
        exits_seen.add(round(results[c].mean_exit_depth, 3))
    assert len(exits_seen) > 10  # thresholds really produce varied exits


def test_exit_depths_match_the_model(demo, data, tmp_path):
    c = DeploymentConfig(depth_tau=0.95)
    r = AccuracyEngine(demo, data, cache_dir=tmp_path).measure([c])[c]
    with torch.inference_mode():
        exits = torch.cat([demo.run(x, c).exit_depth for x, _ in data.batches(64)])
    assert r.mean_exit_depth == pytest.approx(exits.float().mean().item())
    assert r.exit_fractions == pytest.approx((torch.bincount(exits, minlength=7)[1:].float() / len(exits)).tolist())


def test_off_boundary_configs_run_directly(demo, data, tmp_path):
    c = DeploymentConfig(num_tokens=12, depth=3)  # 12 is not a granularity boundary
    engine = AccuracyEngine(demo, data, cache_dir=tmp_path)
    assert not engine.shareable(c)
    r = engine.measure([c], keep_predictions=True)[c]
    assert not r.shared and torch.equal(r.predictions, _direct_predictions(demo, data, c))


def test_disk_cache_is_reused_and_keyed_by_data(demo, data, tmp_path, monkeypatch):
    configs = [DeploymentConfig(num_tokens=8, depth=2), DeploymentConfig(num_tokens=12)]
    first = AccuracyEngine(demo, data, cache_dir=tmp_path).measure(configs)

    def boom(*a, **k):
        raise AssertionError("the model ran although the cache had the answer")

    fresh = load_model("demo")
    monkeypatch.setattr(fresh, "anytime", boom)
    monkeypatch.setattr(fresh, "run", boom)
    again = AccuracyEngine(fresh, load_data("digits", limit=150), cache_dir=tmp_path).measure(configs)
    assert {c: r.top1 for c, r in again.items()} == {c: r.top1 for c, r in first.items()}
    with pytest.raises(AssertionError, match="cache had the answer"):  # other data: a new key
        AccuracyEngine(fresh, load_data("digits", limit=100), cache_dir=tmp_path).measure(configs[:1])


# ----------------------------------------------------------------------------- FLOPs

CONFIGS = [
    dict(),
    dict(num_tokens=8, mat_dim=16),
    dict(depth=2, num_tokens=4, depth_tau=0.5),
    dict(num_tokens=[16, 16, 8, 4], mat_dim=[32, 24, 16, 16]),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_fvcore_matches_closed_form(kw):
    model = random_model()
    plan = model.plan(**kw)
    fvcore = CostModel(model, stages=FvcoreStages(model)).plan_macs(plan)
    assert fvcore == pytest.approx(plan_macs(model.cfg, plan), rel=0.01)
    assert CostModel(model).plan_macs(plan) == plan_macs(model.cfg, plan)  # the one source of truth


@pytest.mark.parametrize("kw", [k for k in CONFIGS if "depth_tau" not in k])
def test_fvcore_matches_torch_flop_counter(kw):
    """torch counts 2 FLOPs per multiply-add and nothing for CPU SDPA unless told how."""
    model = random_model()
    for p in model.parameters():
        p.requires_grad_(False)

    def sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs):
        b, h, nq, dh = q
        return 2 * b * h * nq * k[-2] * (dh + v[-1])

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(torch.zeros(1, 3, 16, 16), **kw)
    for stages in (None, FvcoreStages(model)):
        macs = CostModel(model, stages=stages).plan_macs(model.plan(**kw))
        assert counter.get_total_flops() == pytest.approx(2 * macs, rel=0.01)


def test_expected_cost_under_early_exit():
    model = random_model()
    cm = CostModel(model)
    plan = model.plan(num_tokens=8, depth_tau=0.5)
    block, readout = cm.stages.block(8, model.cfg.ffn_hidden, plan.grans[0]), cm.stages.readout(8)
    base = cm.stages.embed() + cm.stages.read(8)
    everyone_exits_after_1 = cm.plan_macs(plan, [1.0, 0, 0, 0])
    assert everyone_exits_after_1 == base + block + readout
    nobody_exits = cm.plan_macs(plan, [0, 0, 0, 1.0])
    assert nobody_exits == base + 4 * block + 3 * readout + readout  # three checks, then the final readout
    half = cm.plan_macs(plan, [0.5, 0, 0, 0.5])
    assert half == pytest.approx((everyone_exits_after_1 + nobody_exits) / 2)


def test_an_unwritable_cache_warns_once_and_still_measures(demo, data, tmp_path):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file where the cache folder should be")
    configs = [DeploymentConfig(num_tokens=8), DeploymentConfig(num_tokens=8, mat_dim=8)]
    with pytest.warns(UserWarning, match="not writable") as caught:
        got = AccuracyEngine(demo, data, cache_dir=not_a_folder).measure(configs)
    assert len([w for w in caught if "not writable" in str(w.message)]) == 1
    expected = AccuracyEngine(demo, data, cache_dir=tmp_path / "ok").measure(configs)
    assert all(got[c].top1 == expected[c].top1 for c in configs)


def test_shard_tables_merge_into_the_whole_datas_table(demo, data, tmp_path):
    """What the Ray tasks do (search/engines/ray_accuracy.py), in one process: 3 uneven contiguous shards,
    one pass each, joined in order, equal one pass over everything byte for byte in the integer tables."""
    from adasearch.data.split import shards
    from adasearch.measure.accuracy import merge_tables

    engine = AccuracyEngine(demo, data, batch_size=16, cache_dir=tmp_path)
    parts = shards(data, 3)
    assert [len(p) for p in parts] == [len(data) // 3 + (i < len(data) % 3) for i in range(3)]
    assert torch.equal(torch.cat([p.labels() for p in parts]), data.labels())
    rep = DeploymentConfig(mat_dim=demo.cfg.embed_dim // 2)
    merged = merge_tables([engine.anytime_table(rep, part) for part in parts])
    whole = engine.anytime_table(rep)
    for name in ("pred", "in_top5", "prefixes"):
        assert merged[name].numpy().tobytes() == whole[name].numpy().tobytes(), name
    torch.testing.assert_close(merged["conf"], whole["conf"])
    # Installed, it is the table every config of that width setting is measured from.
    engine.install_table(rep, merged)
    assert not engine.missing_tables([rep]) and engine.missing_tables([DeploymentConfig()])
