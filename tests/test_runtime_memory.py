"""Forwards that hold memory of their own (onnxruntime sessions) are sized before they are built: a timing of
more configs than fit runs in groups, one after another, and a config that cannot fit is refused in one line.

The free memory is the one input set by the test (adasearch.runtimes.free_bytes): the sessions, the timing and
the paired comparisons are real.
"""

import pytest
import torch

from adasearch import DeploymentConfig
from adasearch.data.datasets import TensorSource
from adasearch.errors import UserError
from adasearch.measure import paired
from adasearch.measure.evaluator import Evaluator, Hardware
from adasearch.measure.interleaved import ROUND_FIGURES
from adasearch.metrics import P50
from adasearch.runtimes import SESSION_WEIGHT_COPIES, plan_weight_bytes
from adasearch.search.runner import runtime_notes

torch.set_grad_enabled(False)
CONFIGS = [DeploymentConfig(num_tokens=n, depth=d) for n, d in [(4, 2), (8, 3), (16, 6), (2, 1), (8, 5)]]


def demo_evaluator(demo, runtime: str) -> Evaluator:
    torch.manual_seed(0)
    x = torch.rand(16, demo.cfg.in_channels, demo.cfg.img_size, demo.cfg.img_size)
    data = TensorSource("made", "made", x, torch.zeros(16, dtype=torch.long))
    return Evaluator(demo, data, Hardware(threads=1, runtime=runtime))


def test_the_weight_bytes_of_a_plan_count_the_blocks_it_runs_and_their_ffn_width(demo):
    # The demo: embed 32, FFN hidden 64, 6 blocks, float32. A block's tensors outside the FFN: two norms (2 x 64),
    # q, k, v, proj (4 x (32 x 32 + 32)), two layer scales (2 x 32): 4,416 numbers; its FFN: fc1 64 x 32 + 64,
    # fc2 32 x 64 + 32: 4,192, of which fc1 and fc2's weight (4,160) scale with the hidden size, fc2's bias not.
    block_rest, ffn_sliced, ffn_bias2 = 4416, 4160, 32
    assert sum(p.numel() for p in demo.blocks[0].parameters()) == block_rest + ffn_sliced + ffn_bias2
    outside = sum(p.numel() for p in demo.parameters()) - 6 * (block_rest + ffn_sliced + ffn_bias2)
    full = demo.plan()
    assert plan_weight_bytes(demo, full) == 4 * sum(p.numel() for p in demo.parameters())
    narrow = demo.plan(num_tokens=8, mat_dim=16, depth=3)  # hidden 32 of 64: half of the sliced tensors
    assert plan_weight_bytes(demo, narrow) == 4 * (outside + 3 * (block_rest + ffn_sliced // 2 + ffn_bias2))


def test_a_timing_that_does_not_fit_runs_in_groups_and_pairs_only_within_one(demo, monkeypatch):
    evaluator = demo_evaluator(demo, "onnxruntime")
    held = [evaluator.runtime.held_bytes(demo.plan(**c.to_dict())) for c in CONFIGS]
    assert held == [int(SESSION_WEIGHT_COPIES * plan_weight_bytes(demo, demo.plan(**c.to_dict()))) for c in CONFIGS]
    # Room (70 % of what is free) for the two largest sessions together, not for three.
    monkeypatch.setattr("adasearch.runtimes.free_bytes", lambda device: int(sum(sorted(held)[-2:]) / 0.7) + 1)
    timed = evaluator.time_interleaved(CONFIGS, budget_s=0.05, rounds=3)

    assert list(timed) == CONFIGS
    groups = evaluator.runtime.stats()["timing_groups"]
    assert 2 <= groups <= len(CONFIGS)
    rounds = {c: timed[c][ROUND_FIGURES][P50] for c in CONFIGS}
    visited = {c: [i for i, v in enumerate(r) if v is not None] for c, r in rounds.items()}
    for c in CONFIGS:
        assert len(rounds[c]) == 3 * groups  # the session's rounds, numbered across its groups
        assert len(visited[c]) == 3 and visited[c] == list(range(visited[c][0], visited[c][0] + 3))
        assert timed[c][P50] > 0 and timed[c][f"{P50}_ci_low"] <= timed[c][P50] <= timed[c][f"{P50}_ci_high"]
    by_group: dict = {}
    for c in CONFIGS:
        by_group.setdefault(visited[c][0], []).append(c)
    assert len(by_group) == groups
    for members in by_group.values():
        assert sum(held[CONFIGS.index(c)] for c in members) <= sum(sorted(held)[-2:])
    a, b = by_group[0][0], next(iter(by_group[3]))  # first and second group
    sessions = {c: {"1": timed[c][ROUND_FIGURES]} for c in CONFIGS}
    assert paired.shared_rounds(sessions[a], sessions[b], P50) == ([], [])
    if len(by_group[0]) > 1:
        first, second = paired.shared_rounds(sessions[a], sessions[by_group[0][1]], P50)
        assert len(first) == len(second) == 3
    # The forwards of each group are released before the next is built: the last group's at most are kept.
    assert len(evaluator.runtime._forwards) <= len(by_group[3 * (groups - 1)])
    assert any("did not all fit in memory" in n for n in runtime_notes(evaluator, {}))


def test_runtimes_on_the_models_own_weights_time_all_configs_together(demo, monkeypatch):
    evaluator = demo_evaluator(demo, "eager")
    monkeypatch.setattr("adasearch.runtimes.free_bytes", lambda device: 1)
    timed = evaluator.time_interleaved(CONFIGS[:3], budget_s=0.03, rounds=2)
    assert all(None not in timed[c][ROUND_FIGURES][P50] for c in CONFIGS[:3])
    assert evaluator.runtime.stats()["timing_groups"] == 1


def test_a_forward_that_cannot_fit_is_refused_in_one_line_before_it_is_built(demo, monkeypatch):
    evaluator = demo_evaluator(demo, "onnxruntime")
    monkeypatch.setattr("adasearch.runtimes.free_bytes", lambda device: 1000)
    with pytest.raises(UserError) as e:
        evaluator.runner(CONFIGS[2])
    message = str(e.value)
    assert "\n" not in message and "runtime onnxruntime" in message and "GiB is free" in message
    assert evaluator.runtime.builds == 0
    with pytest.raises(UserError):
        evaluator.time_interleaved(CONFIGS[:2], budget_s=0.03)
