"""MACs and CPU latency of a model of the released IN-1K size (random weights), batch 1.

python bench/released_size.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch import AdaPerceiver, AdaPerceiverConfig, DeploymentConfig  # noqa: E402
from adasearch.measure.closed_form_macs import CostModel, plan_macs  # noqa: E402
from adasearch.measure.fvcore_macs import FvcoreStages  # noqa: E402
from adasearch.measure.latency import time_config  # noqa: E402
from adasearch.model.released import RELEASED_IN1K as IN1K  # noqa: E402


def main(budget_s: float = 4.0):
    torch.manual_seed(0)
    model = AdaPerceiver(AdaPerceiverConfig(**IN1K)).eval()
    cost = CostModel(model, stages=FvcoreStages(model))  # the cross-check beside the closed form
    batches = [torch.randn(1, 3, 224, 224) for _ in range(2)]
    rows = []
    for n in IN1K["mask_token_grans"]:
        c = DeploymentConfig(num_tokens=n)
        plan = model.plan(**c.to_dict())
        macs = cost.plan_macs(plan)
        lat = time_config(model, c, batches, device=torch.device("cpu"), budget_s=budget_s, min_reps=3, warmup=1)
        rows.append(
            [
                n,
                f"{macs / 1e9:.2f}",
                f"{plan_macs(model.cfg, plan) / 1e9:.2f}",
                f"{lat.p50_ms:.1f}",
                f"{lat.p90_ms:.1f}",
                lat.reps,
            ]
        )
    params = sum(p.numel() for p in model.parameters())
    save_table(
        "released_size",
        f"Released IN-1K size ({params / 1e6:.1f} M params, D=832, L=21), CPU, batch 1, float32",
        ["tokens", "GMACs (fvcore)", "GMACs (closed form)", "p50 ms", "p90 ms", "reps"],
        rows,
        [
            "Full width and depth. Reference facts: about 5.5 / 9.9 / 14.5 / 19.1 / 28.5 / 38.2 GMACs.",
            "MACs: 1 = one multiply-add (fvcore's 'flop'); FLOPs = 2 x MACs.",
        ],
    )


if __name__ == "__main__":
    main()
