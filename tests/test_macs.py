"""Closed-form MACs against the reference's published totals for the released IN-1K shape."""

import pytest

from adasearch.measure.closed_form_macs import plan_macs
from adasearch.model.adaperceiver import make_plan
from tests.helpers import IN1K


@pytest.mark.parametrize("n,gmacs", [(32, 5.5), (64, 9.9), (96, 14.5), (128, 19.1), (192, 28.5), (256, 38.2)])
def test_released_shape_totals(n, gmacs):
    assert IN1K.ffn_hidden == 2138
    macs = plan_macs(IN1K, make_plan(IN1K, num_tokens=n))
    assert abs(macs / 1e9 - gmacs) < 0.05 * gmacs + 0.05


def test_cost_falls_with_every_knob():
    full = plan_macs(IN1K, make_plan(IN1K))
    assert plan_macs(IN1K, make_plan(IN1K, mat_dim=416)) < full
    assert plan_macs(IN1K, make_plan(IN1K, depth=7)) < full
    assert plan_macs(IN1K, make_plan(IN1K, num_tokens=[256] * 10 + [64] * 11)) < full
    # an exit check after each block adds a write + head per block
    assert plan_macs(IN1K, make_plan(IN1K, depth_tau=0.9)) > full
