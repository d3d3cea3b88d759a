"""A capture-clean forward: static configs trace whole and, warm, build no tables and copy in no host data.

On CPU the op count is what shows the CUDA problem (a host tensor copied in during capture fails it);
on a GPU, bench/gpu_check.py captures the same forwards in CUDA graphs.
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adasearch import load_model
from adasearch.model.adaperceiver import block_mask, rope_table

torch.set_grad_enabled(False)

STATIC = [
    {},
    {"num_tokens": 8, "depth": 4},
    {"num_tokens": 12, "mat_dim": 16, "depth": 3},
    {"token_grans": [4, 12, 20], "depth": 5},
]
# Ops that build a table or bring host data into a forward (lift_fresh: torch.tensor(...) of host values).
TABLE_OPS = ("arange", "polar", "view_as_complex", "searchsorted", "lift_fresh")


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> Counter:
    with OpCounter() as counter:
        fn()
    return counter.ops


@pytest.fixture(scope="module")
def digits(demo):
    torch.manual_seed(0)
    return torch.rand(2, demo.cfg.in_channels, demo.cfg.img_size, demo.cfg.img_size)


@pytest.mark.parametrize("knobs", STATIC, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_a_warm_static_forward_builds_no_tables(demo, digits, knobs):
    demo(digits, **knobs)  # warm: masks of new granularities are built once, here
    ops = count_ops(lambda: demo(digits, **knobs))
    assert {op: ops[op] for op in TABLE_OPS if ops[op]} == {}, ops
    assert ops["_local_scalar_dense"] == 0 and ops["nonzero"] == 0  # no host sync at all
    assert ops["addmm"] + ops["mm"] + ops["bmm"] > 0  # the counter saw the forward


@pytest.mark.parametrize("knobs", STATIC, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_a_static_forward_traces_with_no_graph_break(demo, digits, knobs):
    import torch._dynamo

    plan = demo.plan(**knobs)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda x: demo.forward_plan(x, plan).logits)(digits)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_the_warm_forward_equals_a_cold_one(demo, digits):
    # Cached tables change nothing: a fresh model of the same weights gives the same logits to the bit.
    knobs = {"token_grans": [4, 12, 20], "depth": 5}
    warm = demo(digits, **knobs).logits
    fresh = load_model("demo").eval()
    assert torch.equal(fresh(digits, **knobs).logits, warm)


def test_an_exit_check_syncs_once(demo, digits):
    batch = torch.cat([digits] * 4)
    exiting = {"num_tokens": 8, "depth": 6, "depth_tau": 0.5}
    demo(batch, **exiting)
    ops = count_ops(lambda: demo(batch, **exiting))
    checks = ops["amax"]  # one max-softmax per exit check, and none elsewhere in a forward
    assert checks >= 1
    assert ops["_local_scalar_dense"] <= checks  # at most one host read per check
    assert ops["nonzero"] == 0  # no boolean indexing (a second sync)


def test_exit_results_equal_a_per_sample_reference(demo, digits):
    # The stable-sort split keeps every sample's own logits and depth: each sample alone gives the same.
    torch.manual_seed(1)
    batch = torch.rand(6, demo.cfg.in_channels, demo.cfg.img_size, demo.cfg.img_size)
    out = demo(batch, num_tokens=8, depth=6, depth_tau=0.6)
    assert len(set(out.exit_depth.tolist())) > 1, "the batch should split for this test to mean anything"
    for i in range(len(batch)):
        alone = demo(batch[i : i + 1], num_tokens=8, depth=6, depth_tau=0.6)
        assert alone.exit_depth.item() == out.exit_depth[i].item()
        assert torch.allclose(alone.logits[0], out.logits[i], atol=1e-5)


def test_tables_follow_the_model_and_stay_float32(demo):
    model = load_model("demo").to(torch.bfloat16)
    cos, sin = model.rope(8)
    assert cos.dtype == sin.dtype == torch.float32
    ref_cos, ref_sin = rope_table(8, model.cfg.head_dim, model.cfg.rope_theta, model.cfg.max_latent_tokens)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert torch.equal(model.mask((2, 8)), block_mask((2, 8)))
