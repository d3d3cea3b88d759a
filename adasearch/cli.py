"""The `adasearch` command. Thin: each command parses flags and calls the library.

A mistake in the user's input (UserError) prints one line and exits 2; never a traceback.
"""
from __future__ import annotations

import json
import sys
import warnings

import click

from adasearch.errors import UserError


class Group(click.Group):
    """Turns UserError (and a few library errors a user causes) into `error: ...` + exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


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


@main.command("train-demo")
@click.option("--output", "-o", default=None, help="Folder for the weights (default: the package's demo folder).")
@click.option("--epochs", default=None, type=click.IntRange(1, 10_000), help="Training epochs.")
@click.option("--seed", default=0, show_default=True, type=int)
def train_demo_cmd(output, epochs, seed):
    """Retrain the built-in demo model on sklearn digits (a few minutes on 2 CPU cores)."""
    from rich.progress import Progress

    from adasearch.model.loading import DEMO_DIR, load_model
    from adasearch.model.train_demo import DEFAULT_EPOCHS, train_demo, write_accuracy_table

    output = output or str(DEMO_DIR)
    epochs = epochs or DEFAULT_EPOCHS
    with Progress() as bar:
        task = bar.add_task("training", total=epochs)
        info = train_demo(output, epochs=epochs, seed=seed,
                          progress=lambda e, n, loss: bar.update(task, completed=e, description=f"loss {loss:.3f}"))
    click.echo(f"trained {info['epochs']} epochs in {info['seconds']:.0f} s -> {output}")
    click.echo(write_accuracy_table(load_model(output)))


if __name__ == "__main__":
    main()
