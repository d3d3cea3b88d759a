"""Helpers the tests share: small random-weight models in the published layouts, and run specs.

Test modules import from here (never from one another); conftest.py turns some into fixtures.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from adasearch.model.adaperceiver import AdaPerceiver, AdaPerceiverConfig
from adasearch.model.released import released_in1k_config

# Published IN-1K layout (use_embed_ffn, LayerScale, no output FFN) at a test-sized scale.
SMALL = dict(
    embed_dim=32, num_heads=4, depth=4, max_latent_tokens=16, ffn_ratio=2.57, mask_token_grans=[2, 4, 8, 16],
    mat_dims=[16, 24, 32], img_size=16, patch_size=4, in_channels=3, num_classes=7, use_embed_ffn=True,
    use_output_ffn=False, ls_init_values=1e-6,
)  # fmt: skip

# The released IN-1K shape (config only: building it allocates 86 M parameters).
IN1K = released_in1k_config()

# A demo space with every knob: 36 configs, 30 distinct networks (depth 1 ignores the threshold).
DEMO_SPACE = {"num_tokens": [1, 4, 32], "depth": [1, 3, 6], "mat_dim": [8, 32], "depth_tau": [None, 0.9]}


def random_model(seed: int = 0, **overrides) -> AdaPerceiver:
    """Random weights; LayerScale and biases randomised so no path is a no-op in the tests."""
    torch.manual_seed(seed)
    model = AdaPerceiver(AdaPerceiverConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def write_run_spec(
    folder: Path,
    space: dict = DEMO_SPACE,
    *,
    name: str = "t",
    objectives=("accuracy", "gmacs"),
    constraints=None,
    limit: int = 100,
    hardware=None,
    **search,
) -> Path:
    """space.yaml and spec.yaml in `folder` for a small demo search into folder/out; returns the spec's path.
    Short timing budgets unless `search` says otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump({"knobs": space}))
    spec = {
        "name": name,
        "model": "demo",
        "data": {"source": "digits", "limit": limit},
        "objectives": list(objectives),
        "constraints": constraints or {},
        "search": {"space": "space.yaml", "latency_budget_s": 0.01, "final_latency_budget_s": 0.02, **search},
        "output": str(folder / "out"),
    }
    if hardware:
        spec["hardware"] = hardware
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def served_run(folder: Path, name: str = "s") -> Path:
    """A demo run whose front holds several timed configs (tokens, depth, width), for serving; its folder."""
    from click.testing import CliRunner

    from adasearch.cli import main

    spec = write_run_spec(
        folder,
        {"num_tokens": [1, 8, 32], "depth": [1, 6], "mat_dim": [8, 32]},
        name=name,
        limit=80,
        objectives=["accuracy", "gmacs", "latency_p50_ms"],  # gmacs: noise can't shrink the front
        latency_budget_s=0.005,
    )
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run outside the per-test cache
        mp.setenv("ADASEARCH_CACHE", str(folder / "cache"))
        result = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder / "out"


def free_port() -> int:
    """A loopback port free at the moment of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """An httpx client of `app` served by a real uvicorn on a free loopback port, ready (warmed up), stopped
    on exit."""
    import httpx
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while client.get("/v2/health/ready").status_code == 503 and time.time() < deadline:
                time.sleep(0.05)  # live, still warming up
            yield client
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def one_line_error(result, *needles) -> str:
    """A CLI result that failed the way users are promised: exit 2, one `error: ...` line holding `needles`."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def run_once(root: Path, space: dict, **spec) -> Path:
    """A finished demo run in root/out (its own accuracy cache), for a module's tests to read; returns root/out."""
    import pytest
    from click.testing import CliRunner

    from adasearch.cli import main

    path = write_run_spec(root, space, **spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADASEARCH_CACHE", str(root / "cache"))
        r = CliRunner().invoke(main, ["run", str(path), "--no-progress"])
    assert r.exit_code == 0, r.output
    return root / "out"


@contextlib.contextmanager
def cpu_burners(n: int, seconds: int = 120):
    """n CPU-burning processes outside this process tree (a double fork: to a monitor in this process they
    are other processes), each ending by itself after `seconds`; killed by PID on exit."""
    burn = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    pids = []
    try:
        for _ in range(n):
            shell = f"{sys.executable} -c '{burn}' >/dev/null 2>&1 & echo $!"
            pids.append(int(subprocess.run(["sh", "-c", shell], capture_output=True, text=True, check=True).stdout))
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
