"""The `adasearch` command. Thin: each command parses flags and calls the library.

A mistake in the user's input (UserError) prints one line and exits 2; never a traceback.
"""

from __future__ import annotations

import json
import sys
import warnings

import click

from adasearch.checks import ENGINES, MAX_QUIET_WAIT_S, MAX_TRIALS, SAMPLERS
from adasearch.cli_options import device_option, dtype_option, runtime_option, threads_option
from adasearch.errors import Terminated, UserError

MAX_ERROR = 600  # characters of an error line: a value quoted from a hostile file must not flood the terminal


def _capped(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 3] + "..."


class Group(click.Group):
    """Turns UserError (and a few library errors a user causes) into `error: ...` + exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {_capped(str(e))}", err=True)
            sys.exit(2)
        except click.UsageError as e:  # a bad flag value: one line too, naming the flag and what is allowed
            if isinstance(e, click.exceptions.NoArgsIsHelpError):
                raise
            click.echo(f"error: {_capped(e.format_message())}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:  # before or after a run's own handling: still no traceback
            click.echo("interrupted", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adasearch")
def main():
    """Find the Pareto-optimal ways to deploy one trained AdaPerceiver."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model, as_json):
    """Show a model's config, size, trained knobs and the MACs of a few configs.

    MODEL is `demo`, a folder with config.json + model.safetensors, or a .safetensors file.
    """
    from adasearch.inspect_model import describe, print_description

    info = describe(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_description(info)


def _finite(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with it is False): a callback of every float flag."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number", param=param)
    return value


def _config_from_flags(config_file, tokens, width, depth, threshold):
    from adasearch.config import DeploymentConfig

    if config_file and any(v is not None for v in (tokens, width, depth, threshold)):
        raise UserError("--config and --tokens/--width/--depth/--threshold are exclusive: give one or the other")
    if config_file:
        return DeploymentConfig.load(config_file)
    return DeploymentConfig(num_tokens=tokens, mat_dim=width, depth=depth, depth_tau=threshold)


@main.command()
@click.argument("model")
@click.option(
    "--data",
    "data_spec",
    default="digits",
    show_default=True,
    help="'digits', a .npz file (x, y), or an image folder (one subfolder per class).",
)
@click.option("--limit", type=int, default=None, help="Measure on a deterministic subsample of this many samples.")
@click.option("--tokens", type=int, default=None, help="num_tokens (default: max_latent_tokens).")
@click.option("--width", type=int, default=None, help="mat_dim (default: full width).")
@click.option("--depth", type=int, default=None, help="Blocks to run (default: all).")
@click.option("--threshold", type=float, default=None, help="Early-exit threshold depth_tau (default: none).")
@click.option(
    "--config", "config_file", type=click.Path(), default=None, help="A deployment YAML/JSON instead of knob flags."
)
@device_option("cpu")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True, help="Batch size for latency.")
@threads_option("torch's")
@dtype_option("float32")
@runtime_option("eager")
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=1.0,
    show_default=True,
    callback=_finite,
    help="Seconds of latency timing.",
)
@click.option("--cache-dir", type=click.Path(), default=None, help="Accuracy cache (default ~/.cache/adasearch).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def measure(
    model,
    data_spec,
    limit,
    tokens,
    width,
    depth,
    threshold,
    config_file,
    device,
    batch_size,
    threads,
    dtype,
    runtime,
    budget,
    cache_dir,
    as_json,
):
    """Measure one config of MODEL: accuracy, MACs/FLOPs, latency, memory, mean exit depth."""
    from adasearch.measure.evaluator import Hardware, build_evaluator
    from adasearch.measure.report_table import print_measurement

    config = _config_from_flags(config_file, tokens, width, depth, threshold)
    hw = Hardware(device=device, threads=threads, batch_size=batch_size, dtype=dtype, runtime=runtime)
    evaluator = build_evaluator(
        model, data_spec, hw, limit=limit, data_key="--data", cache_dir=cache_dir, latency_budget_s=budget
    )
    config.validate(evaluator.model.cfg)
    data = evaluator.data
    m = evaluator.measure([config])[config]
    if as_json:
        click.echo(json.dumps({"config": config.to_dict(), "data": data.name, **m.to_dict()}, indent=2))
    else:
        print_measurement(config, m, data.name)


@main.command()
@click.argument("spec_file", type=click.Path())
@click.option("--output", "-o", default=None, help="Results folder (overrides `output`).")
@click.option("--engine", type=click.Choice(ENGINES), default=None)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None)
@click.option("--trials", type=click.IntRange(1, MAX_TRIALS), default=None, help="Trial budget (optuna/ray).")
@click.option("--timeout", type=float, default=None, help="Seconds before the search stops.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Parallel worker processes on one storage.")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite in the results folder).")
@click.option("--ray-address", default=None, help="Join an existing Ray cluster (default: start a local one).")
@click.option(
    "--quiet-wait",
    type=click.FloatRange(0, MAX_QUIET_WAIT_S),
    default=None,
    callback=_finite,
    help="Seconds, in all, to pause timing while other processes keep the machine busy (default 0).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the results (and default storage) of another or an earlier "
    "run in the output folder, instead of refusing.",
)
def run(spec_file, no_progress, overwrite, **flags):
    """Search SPEC_FILE's space for the Pareto-optimal deployment configs; write the results folder.

    Running the same command again resumes from the storage.
    """
    from adasearch.search.runner import run as run_search
    from adasearch.spec import load_spec

    spec = load_spec(spec_file).with_overrides(**flags)  # --output, --engine, ... win over the file
    summary = run_search(spec, progress=not no_progress, overwrite=overwrite)
    if summary.interrupted:
        sys.exit(143 if summary.stopped_by == "SIGTERM" else 130)


@main.command()
@click.argument("spec_file", type=click.Path())
@click.option("--output", "-o", default=None, help="Results folder (overrides `output`).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def profile(spec_file, output, no_progress):
    """Build the latency model of SPEC_FILE's target (its parts timed, interleaved) and print it.

    It is stored in the results folder as latency_model.json; `run` reuses it on the same target.
    """
    from adasearch.search.latency_profile import profile_spec
    from adasearch.spec import load_spec

    profile_spec(load_spec(spec_file).with_overrides(output=output), progress=not no_progress)


@main.command()
@click.argument("run_folder", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "csv", "json"]),
    default="html",
    show_default=True,
    help="html: report.html + report.md; csv/json: export the Pareto and trials tables.",
)
def report(run_folder, fmt):
    """Write the Pareto report of a results folder (report.html with plots embedded, report.md)."""
    from adasearch.report.build import export_tables, write_report

    paths = write_report(run_folder) if fmt == "html" else export_tables(run_folder, fmt)
    for p in paths:
        click.echo(str(p))


@main.command()
@click.argument("run_folder", metavar="RUN", type=click.Path())
@click.option(
    "--pick",
    "expr",
    required=True,
    help="Which Pareto config, e.g. 'max accuracy where latency_p90_ms <= 10 and gflops <= 2'.",
)
@click.option(
    "--output", "-o", default=None, type=click.Path(), help="Write to this file (default: stdout); a folder for onnx."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "kwargs", "onnx"]),
    default="yaml",
    show_default=True,
    help="yaml: the deployment YAML; kwargs: the reference forward kwargs as JSON; onnx: an ONNX file checked "
    "against eager on the run's held-out images, with its deployment YAML beside it (default folder RUN/exports).",
)
@click.option("--as-kwargs", is_flag=True, help="Same as --format kwargs.")
def export(run_folder, expr, output, fmt, as_kwargs):
    """Pick one config of RUN's Pareto front and write it as a deployment YAML, reference kwargs or ONNX.

    --pick: max|min METRIC [where METRIC OP NUMBER [and ...]], OP one of <= < >= > == !=.
    """

    import yaml

    from adasearch.config import DeploymentConfig
    from adasearch.pick import pick
    from adasearch.run_folder import RunFolder, deployment_doc, write_atomic

    folder = RunFolder(run_folder)
    pareto = folder.read_pareto()
    row = pick(pareto["pareto"], expr)
    run = folder.read_run()
    deployment = deployment_doc(row, run, pareto.get("macs_convention"))
    if fmt == "onnx":
        from adasearch.export_onnx import export_config
        from adasearch.model.loading import load_model

        out_dir = folder.exports_dir() if output is None else RunFolder(output).path
        onnx_path, yaml_path = export_config(load_model(deployment["model"]), row, run, out_dir, deployment)
        click.echo(f"{row['name'].removesuffix('.yaml')} -> {onnx_path} (checked against eager), {yaml_path}")
        return
    if as_kwargs or fmt == "kwargs":
        text = json.dumps(DeploymentConfig.from_dict(row["config"]).reference_kwargs(), indent=2) + "\n"
    else:
        text = yaml.safe_dump(deployment, sort_keys=False)
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomic(output, text)
    click.echo(f"{row['name'].removesuffix('.yaml')} -> {output}")


@main.command()
@click.argument("run_folder", metavar="RUN", type=click.Path())
@click.option("--data", "data_source", required=True, help="Images to certify on: 'digits', a .npz or an image folder.")
@click.option(
    "--accuracy-drop",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    callback=_finite,
    help="Certify top-1 drop vs the full config <= this (needs labels).",
)
@click.option(
    "--disagreement",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    callback=_finite,
    help="Certify the fraction of answers that differ from the full config's <= this (no labels).",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.9,
    show_default=True,
    callback=_finite,
    help="Probability that the bound holds (1 - epsilon).",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="A deterministic subsample of the data.")
def certify(run_folder, data_source, accuracy_drop, disagreement, confidence, limit):
    """Certify RUN's Pareto configs on new data: 'at most DELTA worse than the full config, with
    probability CONFIDENCE' (Learn-then-Test, Pareto Testing). Writes the guarantees into the run's files."""
    from adasearch.certify import certify_run
    from adasearch.metrics import DISAGREEMENT, DROP

    if (accuracy_drop is None) == (disagreement is None):
        raise UserError("certify: give one of --accuracy-drop DELTA or --disagreement DELTA")
    metric, delta = (DROP, accuracy_drop) if accuracy_drop is not None else (DISAGREEMENT, disagreement)
    certified = certify_run(run_folder, data_source, metric, delta, confidence, limit=limit)
    click.echo(f"{len(certified)} config(s) certified: {metric} <= {delta:g} with confidence {confidence:g}")
    for name in certified:
        click.echo(f"  {name.removesuffix('.yaml')}")


@main.command()
@click.argument("run_folder", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model", default=None, help="Model source, if the run's recorded model path is not valid here.")
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(0.001), help="Request size cap.")
@device_option(None, "the one the run measured")
@dtype_option(None, "the one the run measured")
@runtime_option(None, "the one the run measured")
@threads_option("the run's")
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(1, 256), help="Samples per forward.")
@click.option(
    "--max-delay-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1000),
    help="Longest a request waits for others to fill its batch.",
)
@click.option(
    "--max-queue", default=1024, show_default=True, type=click.IntRange(1, 1 << 20), help="Samples waiting, at most."
)
@click.option(
    "--slo-ms",
    default=None,
    type=click.FloatRange(0, min_open=True),
    help="Budget of a request that gives no budget_ms (default: none).",
)
@click.option(
    "--policy",
    type=click.Choice(["deadline", "static"]),
    default="deadline",
    show_default=True,
    help="deadline: per batch, the most accurate config predicted to meet the tightest deadline; "
    "static: the most accurate config always.",
)
@click.option(
    "--latency",
    type=click.Choice(["run", "warm-up"]),
    default="run",
    show_default=True,
    help="What predicts a config's latency: the run's figures (its front and latency model), or the p90 of "
    "forwards timed at warm-up on this machine (when the run's figures no longer describe it).",
)
def serve(run_folder, **options):
    """Serve RUN_FOLDER's Pareto configs over HTTP: POST /predict (with budget_ms), the Open Inference
    Protocol (/v2/models/NAME/infer, NAME the run's name), GET /metrics (Prometheus), /configs, /healthz.

    Requests are batched (--max-batch, --max-delay-ms) in a bounded queue (--max-queue); each batch runs
    under the most accurate config predicted to answer it within its requests' budgets, and a request no
    config can answer in time gets 503 with Retry-After. SIGTERM drains the queue and exits 0. It runs on
    the run's device, dtype and thread count, so the measured latencies that budgets are compared with hold."""
    from adasearch.serving.http import serve as serve_http

    serve_http(
        run_folder, **options
    )  # host, port, model, body cap, device, dtype, threads, batching, slo, policy, latency


@main.command("train-demo")
@click.option("--output", "-o", default=None, help="Folder for the weights (default: the package's demo folder).")
@click.option("--epochs", default=None, type=click.IntRange(1, 10_000), help="Training epochs.")
@click.option("--seed", default=0, show_default=True, type=int)
def train_demo_cmd(output, epochs, seed):
    """Retrain the built-in demo model on sklearn digits (a few minutes on 2 CPU cores)."""
    from rich.progress import Progress

    from adasearch.model.loading import DEMO_DIR, load_model
    from adasearch.model.train_demo import DEFAULT_EPOCHS, format_accuracy_table, train_demo

    output = output or str(DEMO_DIR)
    epochs = epochs or DEFAULT_EPOCHS
    with Progress() as bar:
        task = bar.add_task("training", total=epochs)
        info = train_demo(
            output,
            epochs=epochs,
            seed=seed,
            progress=lambda e, n, loss: bar.update(task, completed=e, description=f"loss {loss:.3f}"),
        )
    click.echo(f"trained {info['epochs']} epochs in {info['seconds']:.0f} s -> {output}")
    click.echo(format_accuracy_table(load_model(output)))


if __name__ == "__main__":
    main()
