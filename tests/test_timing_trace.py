"""Evaluator.timing_trace on the shipped demo and its digits: configs with one trace run the same operations on
the timing images, so their forwards there give the same logits and exit depths; finalists.fold_twins relies on
it to time only one of them."""

import itertools
from pathlib import Path

import torch

from adasearch import DeploymentConfig
from adasearch.measure.evaluator import Hardware, build_evaluator


def test_configs_with_one_timing_trace_compute_the_same_on_the_timing_images(tmp_path):
    evaluator = build_evaluator("demo", "digits", Hardware(threads=1), limit=64, cache_dir=tmp_path)
    configs = [
        DeploymentConfig(num_tokens=n, depth=d, depth_tau=t)
        for n, d, t in itertools.product([1, 8], [2, 3, 4, 5, None], [None, 0.8, 0.9, 0.95])
    ]
    unmeasured = DeploymentConfig(num_tokens=8, depth_tau=0.8)
    assert evaluator.timing_trace(unmeasured) is None  # its exits need a pass: the trace does not run one
    assert not evaluator.accuracy.measured(unmeasured)
    evaluator.accuracy.measure(configs)  # the search measures accuracy first
    traces = {c: evaluator.timing_trace(c) for c in configs}
    assert None not in traces.values()
    twins = [(a, b) for a, b in itertools.combinations(configs, 2) if traces[a] == traces[b]]
    assert len(twins) >= 3, "the demo's exit configs that stop before their cap should share traces"
    assert all(a.depth_tau is not None and b.depth_tau is not None for a, b in twins)  # a static one checks no exit
    assert len(set(traces.values())) > len(configs) // 4  # not one trace for everything
    with torch.inference_mode():
        for a, b in twins:
            for batch in evaluator.latency_batches():
                out_a = evaluator.model.run(batch, a)
                out_b = evaluator.model.run(batch, b)
                assert torch.equal(out_a.logits, out_b.logits), (a.label(), b.label())
                assert torch.equal(out_a.exit_depth, out_b.exit_depth)
    # the trace follows the timing images' exits: one that reaches its cap is no twin of one that runs on
    capped, free = (
        DeploymentConfig(num_tokens=8, depth=2, depth_tau=0.99),
        DeploymentConfig(num_tokens=8, depth_tau=0.99),
    )
    assert max(max(d) for d in evaluator.timing_exit_depths(free)) > 2
    assert evaluator.timing_trace(capped) != evaluator.timing_trace(free)


def test_the_twins_the_readme_names_on_the_demo_run(tmp_path, monkeypatch):
    """examples/demo-cpu.yaml's timing images all stop after block 1 under N8-wfull-d4-tau0.8, so the same config
    with depth cap 2, 3, 5 or none is its twin; with threshold 0.9 it is not (README, "timing twins")."""
    from adasearch.search.context import prepare
    from adasearch.spec import load_spec

    monkeypatch.setenv("ADASEARCH_CACHE", str(tmp_path / "cache"))
    demo_spec = Path(__file__).resolve().parents[1] / "examples" / "demo-cpu.yaml"
    spec = load_spec(demo_spec).with_overrides(output=str(tmp_path / "out"))
    evaluator = prepare(spec, storage=False).measurer.evaluator
    configs = [DeploymentConfig(num_tokens=8, depth=d, depth_tau=t) for d, t in
               [(4, 0.8), (2, 0.8), (3, 0.8), (5, 0.8), (None, 0.8), (4, 0.9)]]  # fmt: skip
    evaluator.accuracy.measure(configs)
    assert all(depths == [1] for depths in evaluator.timing_exit_depths(configs[0]))
    traces = [evaluator.timing_trace(c) for c in configs]
    assert traces[1:5] == [traces[0]] * 4 and traces[5] != traces[0]
