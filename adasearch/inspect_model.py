"""`adasearch inspect`: what a checkpoint is and what its configs cost."""

from __future__ import annotations

from adasearch.config import DeploymentConfig
from adasearch.measure.closed_form_macs import MACS_CONVENTION, CostModel
from adasearch.metrics import COMPUTE, MMACS
from adasearch.model.loading import load_model


def sample_configs(cfg) -> list[DeploymentConfig]:
    """Full model, each trained token count at full width, and the smallest trained config."""
    grans = cfg.mask_token_grans or [cfg.max_latent_tokens]
    widths = cfg.mat_dims or [cfg.embed_dim]
    configs = [DeploymentConfig(num_tokens=g) for g in grans]
    configs += [DeploymentConfig(mat_dim=w) for w in widths[:-1]]
    configs.append(DeploymentConfig(num_tokens=grans[0], mat_dim=widths[0], depth=1))
    return configs


def describe(source: str) -> dict:
    model = load_model(source)
    cfg = model.cfg
    rows = []
    cost = CostModel(model)  # the figures `measure` and `run` report for the same configs
    for c in sample_configs(cfg):
        macs = int(cost.config_macs(c))
        rows.append({"config": c.label(), **c.to_dict(), COMPUTE: macs, MMACS: round(macs / 1e6, 3)})
    return {
        "source": str(source),
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_token_grans": cfg.mask_token_grans,
        "trained_widths": cfg.mat_dims,
        "ffn_hidden": cfg.ffn_hidden,
        "num_patches": cfg.num_patches,
        "macs_convention": MACS_CONVENTION,
        "configs": rows,
    }


def print_description(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = info["config"]
    console.print(f"[bold]{info['source']}[/bold]: AdaPerceiver, {info['parameters']:,} parameters")
    t = Table(show_header=False, box=None)
    for k, v in cfg.items():
        t.add_row(k, str(v))
    console.print(t)
    console.print(
        f"trained token granularities: {info['trained_token_grans']}   "
        f"trained widths (mat_dims): {info['trained_widths']}   FFN hidden: {info['ffn_hidden']}"
    )
    t = Table(title=f"MACs per image ({info['macs_convention']})")
    for col in ("config", "num_tokens", "mat_dim", "depth", "MACs", "MMACs"):
        t.add_column(col, justify="right" if col != "config" else "left")
    for r in info["configs"]:
        t.add_row(
            r["config"],
            str(r["num_tokens"] or "max"),
            str(r["mat_dim"] or "full"),
            str(r["depth"] or "all"),
            f"{r[COMPUTE]:,}",
            f"{r[MMACS]:,.3f}",
        )
    console.print(t)
