"""`adasearch export --format onnx`: a picked config as an ONNX file, verified before it is written.

The file is exported by torch.onnx from the model's own forward for that config (a static config only:
an exit config's control flow is the host's), with a dynamic batch axis, input `x` (B, C, H, W) and
output `y` (B, num_classes) logits. Before anything is written, ONNX Runtime runs it on the run's held-out
images (its search part when it kept none), in float32 on the CPU, against the eager forward: every logit
within VERIFY_ATOL and the same top-1 for every image, or the export is refused in one line.
Beside it, a deployment YAML records the file, its SHA-256 and what the check found.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from adasearch.config import DeploymentConfig
from adasearch.errors import UserError

VERIFY_ATOL = 1e-4  # fp32 logits: the exporter's graph may reorder sums, by ~1e-6 on the demo
VERIFY_IMAGES = 256


def run_images(run: dict, model, limit: int = VERIFY_IMAGES) -> torch.Tensor:
    """Up to `limit` of the run's held-out images (its search part if it kept none), as the run split them."""
    from adasearch.data.datasets import load_data
    from adasearch.data.split import holdout_split

    data_spec = (run.get("spec") or {}).get("data") or {}
    data = load_data(
        data_spec.get("source", "digits"),
        limit=data_spec.get("limit"),
        seed=data_spec.get("seed", 0),
        img_size=model.cfg.img_size,
        channels=model.cfg.in_channels,
    )
    search, heldout = holdout_split(data, data_spec.get("holdout", 0.0), data_spec.get("seed", 0))
    images = []
    for x, _ in (heldout if heldout is not None and len(heldout) else search).batches(64):
        images.append(x)
        if sum(len(b) for b in images) >= limit:
            break
    return torch.cat(images)[:limit].float()


def export_config(model, row: dict, run: dict, out_dir: Path, deployment: dict) -> tuple:
    """Write <name>.onnx and <name>.yaml for one pareto.json row into out_dir; (onnx path, yaml path).
    Nothing is written when the check fails."""
    import yaml

    from adasearch.run_folder import write_atomic
    from adasearch.runtimes import PlanModule, check_runtime, exits, export_onnx, ort_session

    check_runtime("onnxruntime", torch.device("cpu"))
    config = DeploymentConfig.from_dict(row["config"])
    plan = model.plan(**config.to_dict())
    if exits(plan):
        raise UserError(
            f"export --format onnx: config {row['name']} has exit thresholds (depth_tau); ONNX holds static "
            f"configs only: pick one without depth_tau, or export it as YAML"
        )
    model = model.float().eval()
    images = run_images(run, model)
    with torch.no_grad():
        data = export_onnx(PlanModule(model, plan), images[:2].clone())
        eager = model.forward_plan(images, plan).logits.numpy()
    session = ort_session(data, torch.device("cpu"), None)
    ours = session.run(None, {"x": images.numpy()})[0]
    max_diff = float(np.abs(ours - eager).max())
    same_top1 = bool((ours.argmax(-1) == eager.argmax(-1)).all())
    if not (max_diff <= VERIFY_ATOL and same_top1):
        raise UserError(
            f"export --format onnx: config {row['name']}: ONNX Runtime's logits leave eager's by {max_diff:.2e} "
            f"(allowed {VERIFY_ATOL:g}) or change a top-1 ({same_top1=}); nothing written"
        )
    stem = row["name"].removesuffix(".yaml")
    onnx_path, yaml_path = out_dir / f"{stem}.onnx", out_dir / f"{stem}.yaml"
    write_atomic(onnx_path, data)
    doc = dict(deployment)
    doc["onnx"] = {
        "file": onnx_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "input": {"name": "x", "shape": ["batch", *images.shape[1:]], "dtype": "float32"},
        "output": {"name": "y", "shape": ["batch", int(eager.shape[-1])], "meaning": "logits"},
        "verified": {"images": len(images), "max_abs_diff": max_diff, "same_top1": same_top1, "atol": VERIFY_ATOL},
    }
    write_atomic(yaml_path, yaml.safe_dump(doc, sort_keys=False))
    return onnx_path, yaml_path


def check_onnx_file(path: Path, sha256: str) -> bytes:
    """The bytes of an exported file whose checksum matches the deployment's record; else one line."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the exported ONNX file ({e.strerror})")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: its SHA-256 is not the one its deployment YAML records; export it again")
    return data
