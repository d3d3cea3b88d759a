"""Runtimes (hardware.runtime): each runs the configs as eager does, builds once, and refuses what it cannot run.

CUDA graphs need a GPU: bench/gpu_check.py covers them on a machine that has one.
"""

import copy
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from adasearch.cli import main
from adasearch.errors import UserError
from adasearch.run_folder import RunFolder
from adasearch.runtimes import check_runtime, make_runtime
from tests.helpers import one_line_error, write_run_spec

torch.set_grad_enabled(False)
CPU = torch.device("cpu")
STATIC = [{"num_tokens": 8, "depth": 4}, {"num_tokens": 12, "mat_dim": 16, "depth": 3, "token_grans": [4, 12]}]
EXITING = {"num_tokens": 8, "depth": 5, "depth_tau": 0.6}
STATIC_SPACE = {"num_tokens": [4, 16], "depth": [2, 4], "mat_dim": [16, 32]}


@pytest.fixture(scope="module")
def batch(demo):
    torch.manual_seed(0)
    return torch.rand(6, demo.cfg.in_channels, demo.cfg.img_size, demo.cfg.img_size)


@pytest.mark.parametrize("name", ["eager", "compile", "onnxruntime"])
def test_a_runtime_gives_eagers_logits_and_builds_once(demo, batch, name):
    runtime = make_runtime(name, demo, CPU, threads=1)
    for knobs in STATIC:
        plan = demo.plan(**knobs)
        fn = runtime.forward(plan, batch)
        assert torch.allclose(fn(batch), demo.forward_plan(batch, plan).logits, atol=1e-4)
        assert runtime.forward(plan, batch) is fn  # kept: a second ask builds nothing
    assert runtime.stats()["builds"] == len(STATIC)
    if name == "compile":
        assert runtime.stats()["whole_compiles"] == len(STATIC)


def test_compile_runs_an_exit_config_on_compiled_parts(demo, batch):
    runtime = make_runtime("compile", demo, CPU, threads=1)
    plan = demo.plan(**EXITING)
    eager = demo.forward_plan(batch, plan)
    assert len(set(eager.exit_depth.tolist())) > 1, "the batch should split for this test to mean anything"
    out = runtime.forward(plan, batch)(batch)
    assert torch.allclose(out, eager.logits, atol=1e-4)
    stats = runtime.stats()
    assert stats["whole_compiles"] == 0 and stats["part_builds"] >= 3  # embed+read, blocks, readouts
    # the parts were built inside the forward's build: their time is counted once, and the bar says so
    assert stats["builds"] == 1 and stats["build_s"] > 0
    assert runtime.progress_text() == (
        f"compile builds: 1 forwards, {stats['part_builds']} parts, {runtime.build_seconds:.0f} s"
    )


def test_the_progress_bar_shows_a_build_under_way(demo, batch):
    from rich.progress import Progress

    from adasearch.search.progress import BuildColumn

    runtime = make_runtime("onnxruntime", demo, CPU, threads=1)
    column = BuildColumn(runtime)
    with Progress(disable=True) as bar:
        first, second = bar.add_task("networks"), bar.add_task("a step")
        task = {t.id: t for t in bar.tasks}
        assert column.render(task[first]).plain == "onnxruntime builds: 0 forwards, 0 parts, 0 s"
        with runtime.building():  # what the bar reads while an export is under way: the time so far
            runtime._building_since -= 90.0
            assert column.render(task[first]).plain == "onnxruntime builds: 0 forwards, 0 parts, 90 s"
            assert column.render(task[second]).plain == ""  # the first line only
        assert 90 <= runtime.build_seconds < 100
    assert BuildColumn(make_runtime("eager", demo, CPU)).render(task[first]).plain == ""


def test_a_latency_model_times_the_runtimes_parts(demo, batch):
    from adasearch.measure.latency_model import profile

    runtime = make_runtime("onnxruntime", demo, CPU, threads=1)
    plans = [demo.plan(**k) for k in STATIC]
    refs = [({}, plans[0], None), ({}, plans[1], None)]
    lm = profile(demo, [batch], plans, refs, fingerprint={"batch_size": 6, "runtime": "onnxruntime"}, rounds=2,
                 runtime=runtime)  # fmt: skip
    assert runtime.stats()["builds"] == 2  # the two reference forwards, exported once each
    assert len(runtime.parts()._runs) >= 5  # embed+read x2, blocks, readouts: each exported and timed
    assert all(v > 0 for v in lm.parts.values())
    assert 0 < lm.parts["call:b6"] < min(v for k, v in lm.parts.items() if k.startswith("block"))
    eager = profile(demo, [batch], plans, refs, fingerprint={"batch_size": 6}, rounds=1)
    assert "call:b6" not in eager.parts  # an eager forward calls its parts one by one, as the profile does


def test_compiled_parts_have_a_graph_of_their_own_per_shape(demo, batch):
    runtime = make_runtime("compile", demo, CPU, threads=1)
    parts = runtime.parts()
    latents = parts.embed_read(batch, 8)
    for i, hidden in ((0, None), (1, None), (2, 32)):
        latents = parts.run_block(i, latents, [8], hidden)
    # Two block shapes (full width, and hidden 32): two graphs, each under its own code object, so a call
    # checks one graph's guards; blocks 0 and 1 share one.
    names = {k[0] + ":" + c._torchdynamo_orig_callable.__code__.co_name for k, c in parts._compiled.items()}
    assert len([n for n in names if n.startswith("block")]) == 2
    assert len({n.split(":")[1] for n in names}) == len(names)
    assert torch.allclose(parts.readout(latents), demo.readout(demo.run_block(2, demo.run_block(1, demo.run_block(
        0, demo.read(demo.embed(batch), 8), [8]), [8]), [8], 32)), atol=1e-4)  # fmt: skip


def test_wrong_combinations_are_refused_in_one_line(demo, monkeypatch):
    with pytest.raises(UserError, match="cudagraph needs a CUDA device"):
        check_runtime("cudagraph", CPU)
    with pytest.raises(UserError, match="runs static configs only"):
        make_runtime("onnxruntime", demo, CPU).forward(demo.plan(**EXITING), torch.zeros(1, 1, 8, 8))
    # ORT cannot open a bfloat16 or float16 export of this model (no bf16 Conv; fp16 LayerNorm mixes types)
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(UserError, match="onnxruntime runs float32 exports only"):
            make_runtime("onnxruntime", copy.deepcopy(demo).to(dtype), CPU)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    with pytest.raises(UserError, match=r"needs the \[onnx\] extra"):
        check_runtime("onnxruntime", CPU)


@pytest.mark.parametrize(
    "runtime,space,needle",
    [
        ("cudagraph", STATIC_SPACE, "hardware.runtime: cudagraph needs a CUDA device"),
        ("onnxruntime", {**STATIC_SPACE, "depth_tau": [None, 0.9]}, "runs static configs only"),
    ],
)
def test_a_spec_the_runtime_cannot_run_is_refused(tmp_path, runtime, space, needle):
    spec = write_run_spec(tmp_path, space, objectives=("accuracy", "latency_p50_ms"), hardware={"runtime": runtime})
    one_line_error(CliRunner().invoke(main, ["run", str(spec), "--no-progress"]), needle, "spec.yaml")
    assert not (tmp_path / "out" / "run.yaml").exists()


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort")
    spec = write_run_spec(
        folder,
        STATIC_SPACE,
        objectives=("accuracy", "latency_p50_ms"),
        hardware={"runtime": "onnxruntime", "threads": 1},
    )
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_an_onnxruntime_run_names_its_runtime(ort_run):
    folder = RunFolder(ort_run)
    run = folder.read_run()
    assert run["spec"]["hardware"]["runtime"] == "onnxruntime"
    assert run["environment"]["runtime"] == "onnxruntime"
    front = folder.read_pareto()["pareto"]
    assert front and all(r["metrics"]["latency_p50_ms"] > 0 for r in front)
    assert set(folder.read_front()["runtime"]) == {"onnxruntime"}  # pareto.csv says what the figures are
    # The held-out figures came from ONNX Runtime, checked against eager: nothing is flagged in fp32.
    assert all(r["metrics"]["runtime_logit_diff"] < 1e-3 and not r["metrics"]["runtime_numerics_flag"] for r in front)
    assert any(note.startswith("runtime onnxruntime:") for note in run["notes"])


def test_export_writes_an_onnx_file_equal_to_eager(ort_run, demo, batch):
    out = ort_run / "exported"
    result = CliRunner().invoke(
        main, ["export", str(ort_run), "--pick", "max accuracy", "--format", "onnx", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    (onnx_file,) = out.glob("*.onnx")
    doc = yaml.safe_load(onnx_file.with_suffix(".yaml").read_text())
    import hashlib

    assert doc["onnx"]["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert doc["onnx"]["verified"]["same_top1"] and doc["onnx"]["verified"]["max_abs_diff"] <= 1e-4
    # Independently of the export's own check: ONNX Runtime's logits equal eager's on new images.
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    from adasearch import DeploymentConfig

    eager = demo.run(batch, DeploymentConfig.from_dict(doc["config"])).logits.numpy()
    assert np.abs(session.run(None, {"x": batch.numpy()})[0] - eager).max() <= 1e-4


def test_serving_runs_the_runtime_the_figures_were_measured_on(ort_run, batch):
    from adasearch.serving import Deployment

    served = Deployment.load(ort_run)  # the run's runtime: onnxruntime
    eager = Deployment.load(ort_run, runtime="eager")
    assert served.runtime_name == "onnxruntime" and served._runtime.name == "onnxruntime"
    entry, _ = served.choose()
    logits = served.forward(entry.config, batch).logits
    assert served._runtime.stats()["builds"] == 1  # a real ONNX Runtime session served the batch
    assert torch.allclose(logits, eager.forward(entry.config, batch).logits, atol=1e-4)
