"""`adasearch certify RUN --data D`: (re)certify a finished run's front on new data, without searching again.

For example on unlabelled images collected in production, with --disagreement (which needs no labels:
an image folder's class names are ignored then). The front is tested as in the run (search/front/heldout.py):
from the most to the least MACs, Hoeffding-Bentkus p-values, stopping at the first failure. The
guarantees replace any earlier ones in pareto.json and deployments/, which record the data used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from adasearch import metrics
from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.run_folder import PARETO_JSON, RunFolder, deployment_doc
from adasearch.search.front.heldout import certify, compare, outcomes
from adasearch.search.trials import config_key


def certify_run(run: str, data_source: str, metric: str, delta: float, confidence: float,
                limit: Optional[int] = None) -> dict:  # fmt: skip
    """Certify RUN's Pareto configs for `metric` <= delta at `confidence` on `data_source`; rewrite the
    guarantees. Returns {name: guarantee} of the certified configs."""
    from adasearch.data.datasets import check_labels, load_data
    from adasearch.measure.accuracy import AccuracyEngine
    from adasearch.serving.deployment import Deployment

    if metric not in metrics.CERTIFIABLE:
        raise UserError(f"certify: {metric!r} cannot be certified; allowed: {', '.join(metrics.CERTIFIABLE)}")
    for flag, value in (("--confidence", confidence), (f"--{metric.replace('_', '-')}", delta)):
        if not 0 < value < 1:  # NaN fails this too
            raise UserError(f"certify: {flag} {value}: allowed: a number strictly between 0 and 1")
    folder = RunFolder(run)
    pareto, run_doc = folder.read_pareto(), folder.read_run()
    if not pareto["pareto"]:
        raise UserError(f"{folder / PARETO_JSON}: the front is empty: nothing to certify")
    model = Deployment.load(Path(run)).model  # on the run's device and dtype
    cfg = model.cfg
    data = load_data(data_source, limit=limit, img_size=cfg.img_size, channels=cfg.in_channels)
    check_labels(data, cfg.num_classes, "--data")
    x, _ = next(iter(data.batches(1)))
    if tuple(x.shape[1:]) != (cfg.in_channels, cfg.img_size, cfg.img_size):
        raise UserError(
            f"--data {data_source}: images of shape {tuple(x.shape[1:])}; the run's model takes "
            f"{(cfg.in_channels, cfg.img_size, cfg.img_size)}"
        )
    configs = [DeploymentConfig.from_dict(row["config"]) for row in pareto["pareto"]]
    by_config, full = outcomes(AccuracyEngine(model, data), configs)
    figures = {config_key(c): compare(o, full) for c, o in by_config.items()}
    items = [(config_key(c), row["metrics"][metrics.COMPUTE]) for c, row in zip(configs, pareto["pareto"])]
    guarantees = certify(items, figures, metric, delta, confidence)
    certified = {}
    for c, row in zip(configs, pareto["pareto"]):
        row.pop("guarantee", None)
        if config_key(c) in guarantees:
            row["guarantee"] = {**guarantees[config_key(c)], "data": data.name}
            certified[row["name"]] = row["guarantee"]
    pareto["certification"] = {"metric": metric, "max": delta, "confidence": confidence, "data": data.name,
                               "samples": len(data), "certified": len(certified)}  # fmt: skip
    folder.write_pareto(pareto)
    folder.write_deployments({row["name"]: deployment_doc(row, run_doc, pareto.get("macs_convention"))
                              for row in pareto["pareto"]})  # fmt: skip
    return certified
