"""The latency model of the target (measure/latency_model.py): additivity, early exit, storage, refusal.

Timing is flaky, so additivity is checked with a fake clock: one that reads the floating-point
operations torch has run (torch.utils.flop_counter). Under it a part "takes" exactly its FLOPs, with
no noise, so the prediction of a whole forward must equal a direct timing of it exactly when the parts
are the forward's parts, and miss when one is left out.
"""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adasearch import DeploymentConfig
from adasearch.measure.interleaved import time_interleaved
from adasearch.measure.latency_model import (
    EXIT_RATIO_BOUNDS,
    LatencyModel,
    active_sizes,
    exit_curve,
    part_keys,
    profile,
)
from adasearch.metrics import P50, P90, P99, THROUGHPUT
from adasearch.model.adaperceiver import make_plan
from tests.helpers import random_model

STATIC = [
    DeploymentConfig(),
    DeploymentConfig(num_tokens=4, mat_dim=16, depth=2),
    DeploymentConfig(num_tokens=(16, 16, 8, 4), mat_dim=(32, 24, 16, 16)),  # per-layer knobs
]


class FlopClock:
    """A clock that reads FLOPs run so far (as 'seconds'): timing without noise."""

    def __init__(self):
        self.mode = FlopCounterMode(display=False)

    def __call__(self) -> float:
        return float(self.mode.get_total_flops())


def _profiled(model, x, configs, clock):
    plans = [make_plan(model.cfg, **c.to_dict()) for c in configs]
    refs = [(c.to_dict(), make_plan(model.cfg, **c.to_dict()), None) for c in (STATIC[1], STATIC[0])]
    exiting = [c for c in configs if c.depth_tau is not None]
    refs += [(c.to_dict(), make_plan(model.cfg, **c.to_dict()), [model.run(x, c).exit_depth.tolist()]) for c in exiting]
    with clock.mode:
        return profile(model, [x], plans, refs, fingerprint={"t": 1}, clock=clock, rounds=2)


def test_static_prediction_equals_a_direct_timing_under_a_fake_clock():
    model = random_model().requires_grad_(False)  # the FLOP counter's module hooks trip on parameters needing grad
    x = torch.randn(2, 3, 16, 16)
    clock = FlopClock()
    lm = _profiled(model, x, STATIC, clock)
    # The reference forwards are exactly their parts' sum: the calibration is the identity.
    assert [r for _, r in lm.curve] == pytest.approx([1.0, 1.0]) and lm.exit_curve == []
    assert lm.noise == [1.0] * len(lm.noise)
    with clock.mode:
        fns = [lambda b, c=c: model.run(b, c) for c in STATIC]
        timed = time_interleaved(fns, [x], sync=lambda: None, budget_s=0.0, rounds=2, clock=clock)
    for c, direct in zip(STATIC, timed):
        predicted = lm.predict(make_plan(model.cfg, **c.to_dict()))
        assert predicted[P50] == pytest.approx(direct[P50], rel=1e-9), c.label()
        assert predicted[P90] == pytest.approx(direct[P90], rel=1e-9)
        assert predicted[THROUGHPUT] == pytest.approx(direct[THROUGHPUT], rel=1e-9)
    # A forward is more than its blocks: leave the readout out and the prediction falls short.
    plan = make_plan(model.cfg)
    without = {k: v for k, v in lm.parts.items() if not k.startswith("readout:")}
    with pytest.raises(KeyError):
        LatencyModel(lm.fingerprint, 2, without, [[1.0, 1.0]], [], [1.0]).predict(plan)


def test_exit_prediction_under_a_fake_clock_when_every_sample_stops_at_one_depth():
    """tau 0 stops every sample at the first check: the whole batch runs 2 blocks and one exit check."""
    model = random_model().requires_grad_(False)  # the FLOP counter's module hooks trip on parameters needing grad
    x = torch.randn(4, 3, 16, 16)
    config = DeploymentConfig(num_tokens=8, depth_tau=(None, 0.0, None, None))
    clock = FlopClock()
    lm = _profiled(model, x, [config], clock)
    assert active_sizes(4, exits=True) == [1, 2, 4]
    with clock.mode:
        out = model.run(x, config)
        direct = time_interleaved([lambda b: model.run(b, config)], [x], sync=lambda: None, budget_s=0.0, rounds=1,
                                  clock=clock)[0]  # fmt: skip
    assert out.exit_depth.tolist() == [2, 2, 2, 2]
    assert [r for _, r in lm.exit_curve] == pytest.approx([1.0])  # the exit reference took exactly its parts, too
    plan = make_plan(model.cfg, **config.to_dict())
    assert lm.predict(plan, [[2, 2, 2, 2]])[P50] == pytest.approx(direct[P50], rel=1e-9)
    assert lm.predict(plan, [[2, 2, 2, 2]])[P50] < lm.predict(plan, [[4, 4, 4, 4]])[P50]


def _hand_model(noise=(1.0,), curve=((0.0, 2.0), (100.0, 2.0)), exit_curve=((0.0, 1.0),)) -> LatencyModel:
    """Parts with hand-set times (ms): a block costs 1 + 1 per active sample, profiled at 1, 2 and 4."""
    parts = {"embed_read:n8:b4": 10.0}
    for b in (1, 2, 4):
        parts[f"block:n8:h20:g2-4-8:b{b}"] = 1.0 + b
        parts[f"exit:n8:b{b}"] = 0.5 * b
        parts[f"stop:n8:b{b}"] = 0.5 * b + 0.125
        parts[f"readout:n8:b{b}"] = 0.25 * b
    return LatencyModel({"t": 1, "batch_size": 4}, 4, parts, [list(p) for p in curve], [list(p) for p in exit_curve],
                        list(noise))  # fmt: skip


def test_early_exit_prediction_from_known_exit_depths_by_hand():
    cfg = random_model().cfg
    plan = make_plan(cfg, num_tokens=8, mat_dim=8, depth=3, depth_tau=0.9, token_grans=[2, 4, 8])
    assert plan.hidden == (20, 20, 20)
    assert set(part_keys(plan, 4)) <= set(_hand_model().parts)
    lm = _hand_model()
    # Exit depths 1, 2, 3, 3: blocks run on 4, 3, 2 samples; checks after blocks 1 and 2 on 4 and 3,
    # both stopping a sample (a "stop": 0.125 more); the final readout on 2. A block at 3 samples is
    # interpolated between the profiled 2 and 4: 4.0.
    by_hand = 10 + (5 + 2.125) + (4 + 1.625) + (3.0) + 0.5
    assert lm.batch_sum(plan, [1, 2, 3, 3]) == pytest.approx(by_hand)
    # Every sample stops after block 1: one block, one check that stops them all, no final readout.
    assert lm.batch_sum(plan, [1, 1, 1, 1]) == pytest.approx(10 + 5 + 2.125)
    # Nobody stops early: three blocks on 4, two checks that stop nobody, the readout on 4.
    assert lm.batch_sum(plan, [3, 3, 3, 3]) == pytest.approx(10 + 3 * 5 + 2 * 2.0 + 1.0)
    # Two timed batches, noise ratios 0.9, 1, 1.5: p90 and p99 are percentiles of the 6-point mixture; p50, as
    # the timer takes it, each batch's median (its sum x the median ratio, 1.0), then their median: their mean.
    # An exit config runs as its parts, so the static curve (a whole forward is 2 x its parts) does not apply:
    # only the exit curve, at the median of the batches' plain sums (here the mean of the two).
    lm = _hand_model(noise=(0.9, 1.0, 1.5), exit_curve=((10.0, 1.0), (30.0, 2.0)))
    ratio = 1.0 + (((by_hand + 17.125) / 2) - 10.0) / 20.0
    sums = [ratio * by_hand, ratio * (10 + 5 + 2.125)]
    mixture = [s * r for s in sums for r in (0.9, 1.0, 1.5)]
    got = lm.predict(plan, [[1, 2, 3, 3], [1, 1, 1, 1]])
    assert got[P50] == pytest.approx((sums[0] + sums[1]) / 2)
    assert got[P50] < float(np.percentile(mixture, 50))  # the pooled median: the heavy batch's noise pulls it up
    for name, q in ((P90, 90), (P99, 99)):
        assert got[name] == pytest.approx(float(np.percentile(mixture, q)))
    assert got[THROUGHPUT] == pytest.approx(4 * 1e3 / np.mean(mixture))


def test_a_static_config_pays_a_runtimes_call_once_and_an_exit_config_once_per_part():
    cfg = random_model().cfg
    lm = _hand_model()
    lm.parts["call:b4"] = 0.75  # a call of next to nothing under the runtime (compile, cudagraph, onnxruntime)
    static = make_plan(cfg, num_tokens=8, mat_dim=8, depth=3, token_grans=[2, 4, 8])
    # Embed + read, three blocks on 4 samples, the readout on 4: 5 parts timed as 5 calls; the whole static
    # forward is one call, so 4 calls' cost comes off.
    assert lm.batch_sum(static) == pytest.approx(10 + 3 * 5 + 1.0 - 4 * 0.75)
    exiting = make_plan(cfg, num_tokens=8, mat_dim=8, depth=3, depth_tau=0.9, token_grans=[2, 4, 8])
    assert lm.batch_sum(exiting, [3, 3, 3, 3]) == pytest.approx(10 + 3 * 5 + 2 * 2.0 + 1.0)  # runs as parts
    lm.parts["call:b4"] = 100.0  # a call's cost never takes more than half of the sum
    assert lm.batch_sum(static) == pytest.approx((10 + 3 * 5 + 1.0) / 2)
    assert LatencyModel.from_dict(lm.to_dict()).parts["call:b4"] == 100.0


def test_the_calibration_curve_interpolates_between_references_and_holds_its_ends():
    lm = _hand_model(curve=((10.0, 1.0), (30.0, 2.0)))
    assert lm.calibrated(20.0) == pytest.approx(20 * 1.5)
    assert lm.calibrated(5.0) == pytest.approx(5.0) and lm.calibrated(40.0) == pytest.approx(80.0)


def test_round_trip_and_refusals():
    lm = _hand_model(noise=(0.9, 1.1), exit_curve=((30.0, 1.5), (10.0, 1.25)))
    doc = json.loads(json.dumps(lm.to_dict()))
    back = LatencyModel.from_dict(doc)
    assert back.parts == lm.parts and back.noise == lm.noise and back.curve == lm.curve
    assert back.exit_curve == [[10.0, 1.25], [30.0, 1.5]]  # sorted by sum, as the curve
    plan = make_plan(random_model().cfg, num_tokens=8, mat_dim=8, depth=3, depth_tau=0.9, token_grans=[2, 4, 8])
    needed = part_keys(plan, 4)
    same = {"t": 1, "batch_size": 4}
    assert back.why_unusable(same, needed) is None
    why = back.why_unusable({**same, "t": 2}, needed)
    assert why == "built for another target (t 1 -> 2)"
    assert "lacks 1 parts" in back.why_unusable(same, needed + ["block:n16:h20:g2-4-8-16:b4"])
    for broken in ({}, {**doc, "version": 99}, {**doc, "parts": {"a": "x"}}, {**doc, "noise": []},
                   {**doc, "calibration": {"curve": [[1.0, float("nan")]], "exit_curve": []}},
                   {**doc, "calibration": {"curve": [[1.0, 1.0]]}},  # no exit curve
                   {**doc, "version": 3, "calibration": {"curve": [[1.0, 1.0]], "exit_factor": 1.0}},
                   {**doc, "calibration": {"curve": [], "exit_curve": []}}):  # fmt: skip
        with pytest.raises(ValueError):
            LatencyModel.from_dict(broken)


def test_exit_references_pair_each_timing_with_the_batch_it_ran():
    """Two timing batches whose samples stop at different depths: under the FLOP clock the exit reference's
    ratio is exactly 1 only if every timing of the exit reference is divided by the prediction of its own batch."""
    model = random_model().requires_grad_(False)
    torch.manual_seed(3)
    batches = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16) * 3]
    with torch.inference_mode():
        conf = torch.cat([model.anytime(b, num_tokens=8).confidence[0, -1] for b in batches])
    tau = float(conf.sort().values[3])  # about half of the 8 samples stop after the first block
    config = DeploymentConfig(num_tokens=8, depth_tau=(tau, None, None, None))
    exits = [model.run(b, config).exit_depth.tolist() for b in batches]
    assert exits[0] != exits[1]
    plans = [make_plan(model.cfg, **c.to_dict()) for c in (config, STATIC[0])]
    refs = [(STATIC[0].to_dict(), plans[1], None), (config.to_dict(), plans[0], exits)]
    clock = FlopClock()
    with clock.mode:
        lm = profile(model, batches, plans, refs, fingerprint={"t": 1}, clock=clock, rounds=3)
    assert [r for _, r in lm.exit_curve] == pytest.approx([1.0], rel=1e-9)
    # Its point lies at the median of the plain sums of the batches the timer cycles (all of them, not only
    # those a round happened to run).
    assert lm.exit_curve[0][0] == pytest.approx(float(np.median([lm.batch_sum(plans[0], d) for d in exits])))
    assert lm.exit_noise == pytest.approx([1.0] * len(lm.exit_noise))


def test_a_malformed_model_is_refused_not_crashed_on():
    doc = _hand_model().to_dict()
    assert LatencyModel.from_dict(json.loads(json.dumps(doc))).batch_size == 4
    for broken, why in (
        ({**doc, "parts": {**doc["parts"], "block:n8": 1.0}}, "is not kind:n<tokens>"),
        ({**doc, "noise": [0.0]}, "positive finite"),
        ({**doc, "calibration": {"curve": [[1.0, 1.0]], "exit_curve": [[1.0, 0.0]]}}, "positive finite"),
        ({**doc, "exit_noise": [float("nan")]}, "positive finite"),
        ({**doc, "batch_size": 8}, "not its fingerprint's"),
    ):
        with pytest.raises(ValueError, match=why):
            LatencyModel.from_dict(broken)


def test_reanchoring_gives_each_exit_reference_its_own_point_on_the_exit_curve():
    """Under load a heavy exit forward can take more over its parts than a light one: a light and a heavy
    reference, each timed on two batches of different sums under a noise that is not flat, are each predicted
    exactly again, and a config between them gets the ratio interpolated at its median sum."""
    cfg = random_model().cfg
    plan = make_plan(cfg, num_tokens=8, mat_dim=8, depth=3, depth_tau=0.9, token_grans=[2, 4, 8])
    lm = _hand_model(exit_curve=((0.0, 1.0),))
    lm.exit_noise = [0.9, 1.0, 1.5]
    light, heavy, middle = [[1, 1, 1, 1], [1, 1, 2, 2]], [[3, 3, 3, 3], [2, 3, 3, 3]], [[1, 2, 3, 3]]
    # By hand (see test_early_exit_prediction_from_known_exit_depths_by_hand for the parts):
    assert [lm.batch_sum(plan, d) for d in light] == pytest.approx([17.125, 10 + 5 + 2.125 + 3 + 1.125])
    assert [lm.batch_sum(plan, d) for d in heavy] == pytest.approx([30.0, 10 + 5 + 2 + 5 + 2.125 + 4 + 0.75])
    x_light, x_heavy = (17.125 + 21.25) / 2, (30.0 + 28.875) / 2  # the medians of two batch sums
    plain = {"light": x_light * 1.0, "heavy": x_heavy * 1.0}  # p50: the median batch x the noise's median
    measured = {"light": 1.1 * plain["light"], "heavy": 2.1 * plain["heavy"]}
    anchored = lm.reanchored([], [(plan, light, measured["light"]), (plan, heavy, measured["heavy"])])
    assert np.ravel(anchored.exit_curve).tolist() == pytest.approx([x_light, 1.1, x_heavy, 2.1])
    assert anchored.curve == lm.curve  # no static timing: the static curve stays
    assert anchored.predict(plan, light)[P50] == pytest.approx(measured["light"])
    assert anchored.predict(plan, heavy)[P50] == pytest.approx(measured["heavy"])
    by_hand = 10 + (5 + 2.125) + (4 + 1.625) + 3.0 + 0.5
    ratio = 1.1 + (by_hand - x_light) / (x_heavy - x_light) * (2.1 - 1.1)
    assert anchored.predict(plan, middle)[P50] == pytest.approx(ratio * by_hand)  # noise median 1.0
    # With no exit timing the exit curve stays too; a static timing moves only the static curve.
    static = make_plan(cfg, num_tokens=8, mat_dim=8, depth=3, token_grans=[2, 4, 8])
    again = anchored.reanchored([(static, 3 * anchored.batch_sum(static))], [])
    assert again.exit_curve == anchored.exit_curve and again.curve == [[anchored.batch_sum(static), 3.0]]


def test_exit_curve_points_are_bounded_and_one_per_sum():
    """A disturbed timing cannot put a point beyond EXIT_RATIO_BOUNDS; references of one median sum share a
    point (their median), so that interpolation is defined."""
    low, high = EXIT_RATIO_BOUNDS
    assert exit_curve([(20.0, 1.2), (10.0, 50.0), (30.0, 0.01)]) == [[10.0, high], [20.0, 1.2], [30.0, low]]
    assert exit_curve([(10.0, 1.0), (10.0, 2.0), (10.0, 1.2), (5.0, 1.0)]) == [[5.0, 1.0], [10.0, 1.2]]
    assert exit_curve([]) == []
