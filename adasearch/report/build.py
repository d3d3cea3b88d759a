"""`adasearch report RUN`: report.html (self-contained, plots embedded) and report.md from a results folder."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass

import pandas as pd

from adasearch import metrics
from adasearch.errors import UserError
from adasearch.measure.contention import report_line
from adasearch.run_folder import PARETO_CSV, PARETO_JSON, RUN, TRIALS, RunFolder

KNOB_COLUMNS = ["knob.num_tokens", "knob.token_grans", "knob.mat_dim", "knob.depth", "knob.depth_tau"]


@dataclass
class RunData:
    folder: RunFolder
    run: dict
    pareto: dict
    trials: pd.DataFrame
    front: pd.DataFrame


def load_run(path) -> RunData:
    """Everything the report reads, through RunFolder (one-line errors for a missing or corrupt file)."""
    folder = RunFolder(path).check()
    run, pareto, trials = folder.read_run(), folder.read_pareto(), folder.read_trials()
    if trials.empty:
        raise UserError(f"{folder / TRIALS}: the run has no finished trials yet")
    spec = run["spec"]
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or not all(
        isinstance(o, dict) and o.get("metric") in trials.columns for o in objectives
    ):
        raise UserError(f"{folder / RUN}: spec.objectives do not name columns of {TRIALS}")
    front = folder.read_front()
    if front.empty:  # an empty pareto.csv has no metric columns; the plots and tables read the trials' columns
        front = trials.iloc[0:0]
    return RunData(folder, run, pareto, trials, front)


def _defaults(data: RunData) -> dict:
    """What None means for each knob column, from the model recorded in run.yaml."""
    m = data.run.get("model_config", {})

    def seen_max(col):
        vals = pd.to_numeric(data.trials.get(col, pd.Series(dtype=float)), errors="coerce")
        return float(vals.max()) if vals.notna().any() else 0.0

    return {
        "knob.num_tokens": m.get("max_latent_tokens") or seen_max("knob.num_tokens"),
        "knob.depth": m.get("depth") or seen_max("knob.depth"),
        "knob.mat_dim": m.get("embed_dim") or seen_max("knob.mat_dim"),
    }


PREDICTED_MD = "## Latency model: predicted against measured"


def _pictures(data: RunData) -> dict:
    from adasearch.report import plots

    spec = data.run["spec"]
    objectives = spec["objectives"]
    constraints = spec.get("constraints", {})
    names = [o["metric"] for o in objectives]
    cost = next((m for m in names if m != metrics.QUALITY), metrics.DEFAULT_COST)
    hv_png, fractions = plots.hypervolume_curve(data.trials, objectives)
    pics = {
        "front": plots.front_plot(data.trials, data.front, objectives, constraints),
        "hypervolume": hv_png,
        "knobs": plots.knob_effects(data.trials, _defaults(data), cost),
        "_hv": fractions,
    }
    if plots.has_predictions(data.trials):
        pics["predicted"] = plots.predicted_vs_measured(data.trials)
    if metrics.TEST_ACCURACY in data.front and len(data.front):
        certified = {row["trial"] for row in data.pareto["pareto"] if row.get("guarantee")}
        pics["heldout"] = plots.heldout_plot(data.front, certified, cost)
    return pics


def _heldout_note(data: RunData) -> str:
    """One sentence on how sure the accuracies are: held-out with intervals and optimism, or in-sample."""
    held = data.run.get("holdout") or {}
    if not held.get("samples"):
        return ("The accuracies are in-sample: measured on the images that chose the front (data.holdout is 0), "
                "so they are optimistic.")  # fmt: skip
    note = (
        f"Held-out accuracies come from {held['samples']} images the search never saw, with 95 % "
        f"Clopper-Pearson intervals; accuracy_drop is paired against the full config on the same images."
    )
    if held.get("optimism") is not None:
        note += f" The front's search accuracy is {held['optimism']:+.4f} above its held-out accuracy on average."
    certification = [f"{g['metric']} <= {g['max']:g} at confidence {g['confidence']:g}"
                     for g in {json.dumps(r["guarantee"], sort_keys=True): r["guarantee"] for r in data.pareto["pareto"]
                               if r.get("guarantee")}.values()]  # fmt: skip
    if certification:
        n = sum(bool(r.get("guarantee")) for r in data.pareto["pareto"])
        note += f" Certified ({'; '.join(sorted(set(certification)))}): {n} config(s), starred."
    return note


def _table(df: pd.DataFrame, columns: list) -> pd.DataFrame:
    if metrics.COMPUTE in df:
        df = df.assign(**{metrics.MMACS: df[metrics.COMPUTE] / 1e6})  # millions read well at every model size
    cols = [c for c in columns if c in df.columns and df[c].notna().any()]
    out = df[cols].copy()
    out.columns = [c.removeprefix("knob.") for c in cols]
    return out


def _fmt(v):
    if isinstance(v, float):
        return "" if pd.isna(v) else (f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}")
    return str(v)


def _metadata(data: RunData) -> list:
    env, space = data.run.get("environment") or {}, data.run.get("space") or {}
    spec = data.run["spec"]
    hw = spec.get("hardware", {})
    return [
        ("model", spec.get("model")),
        ("data", json.dumps(spec.get("data"))),
        (
            "device",
            f"{env.get('device_name', env.get('device'))} ({hw.get('device')}), "
            f"{env.get('threads')} threads, batch {hw.get('batch_size')}, {hw.get('dtype')}",
        ),
        ("runtime", f"{hw.get('runtime', 'eager')}: every latency figure is a forward under this runtime"),
        ("versions", f"adasearch {data.run.get('adasearch')}, torch {env.get('torch')}, python {env.get('python')}"),
        (
            "search",
            f"engine {data.run.get('engine')}, space {space.get('name')} "
            f"({space.get('size')} configs), {data.run.get('trials')} trials, "
            f"{data.run.get('feasible')} feasible, {data.run.get('pareto')} on the front",
        ),
        ("objectives", ", ".join(f"{o['direction']} {o['metric']}" for o in spec["objectives"])),
        (
            "constraints",
            ", ".join(
                f"{k} {'>= ' + str(b['min']) if b.get('min') is not None else ''}"
                f"{' <= ' + str(b['max']) if b.get('max') is not None else ''}"
                for k, b in spec.get("constraints", {}).items()
            )
            or "none",
        ),
        ("timing", report_line(env.get("contention"))),
        ("MACs", data.run.get("macs_convention", "")),
    ]


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left;white-space:nowrap}img{max-width:100%;margin:.5em 0}
.meta td{text-align:left}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em}"""


def write_report(folder) -> list:
    data = load_run(folder)
    pics = _pictures(data)
    # `equivalent`: the configs as fast as each within timing noise (search/front/beyond_noise.py), the alternatives
    pareto = _table(data.front, ["config"] + KNOB_COLUMNS + list(metrics.REPORT_COLUMNS) + ["equivalent"])
    title = f"adasearch report: {data.run['spec'].get('name') or data.folder.path.name}"
    hv = pics["_hv"]
    hv_note = (
        f"The front reached 90% of its final hypervolume after {next(i + 1 for i, f in enumerate(hv) if f >= 0.9)} "
        f"of {len(hv)} trials."
        if hv and hv[-1] > 0
        else "No feasible trial yet."
    )

    def img(key):
        return f'<img alt="{key}" src="data:image/png;base64,{base64.b64encode(pics[key]).decode()}">'

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in _metadata(data))
    table = (
        pareto.to_html(index=False, escape=True, na_rep="", float_format=lambda v: _fmt(v))
        if len(pareto)
        else f"<p><b>No config satisfies the constraints.</b> See {TRIALS} for the closest ones.</p>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>
<table class="meta">{rows}</table>
<h2>Pareto front</h2>{img("front")}
<h2>How sure is this number?</h2><p>{html.escape(_heldout_note(data))}</p>{img("heldout") if "heldout" in pics else ""}
{"<h2>Latency model: predicted against measured</h2>" + img("predicted") if "predicted" in pics else ""}
<h2>Pareto-optimal configs ({len(pareto)})</h2><div style="overflow-x:auto">{table}</div>
<h2>Hypervolume over trials</h2><p>{hv_note}</p>{img("hypervolume")}
<h2>Knob effects</h2>{img("knobs")}
<p style="color:#777">Files: {TRIALS} (every trial), {PARETO_CSV} / {PARETO_JSON}, deployments/*.yaml (import with
<code>adasearch.serving.Deployment.load</code>).</p></body></html>"""
    out = data.folder
    paths = [out.write_text("report.html", page)]
    for key in ("front", "hypervolume", "knobs", "heldout", "predicted"):
        if key in pics:
            out.write_bytes(f"report_files/{key}.png", pics[key])
    md = [f"# {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _metadata(data)]
    md += [
        "",
        "## Pareto front",
        "",
        "![Pareto front](report_files/front.png)",
        "",
        "## How sure is this number?",
        "",
        _heldout_note(data),
        "",
        *(["![Held-out accuracy](report_files/heldout.png)", ""] if "heldout" in pics else []),
        *(
            [
                "## Latency model: predicted against measured",
                "",
                "![Predicted against measured](report_files/predicted.png)",
                "",
            ]
            if "predicted" in pics
            else []
        ),  # fmt: skip
        f"## Pareto-optimal configs ({len(pareto)})",
        "",
    ]
    if len(pareto):
        md.append("| " + " | ".join(pareto.columns) + " |")
        md.append("|" + "---|" * len(pareto.columns))
        md += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in pareto.itertuples(index=False)]
    else:
        md.append("No config satisfies the constraints.")
    md += [
        "",
        "## Hypervolume over trials",
        "",
        hv_note,
        "",
        "![Hypervolume](report_files/hypervolume.png)",
        "",
        "## Knob effects",
        "",
        "![Knob effects](report_files/knobs.png)",
        "",
    ]
    paths.append(out.write_text("report.md", "\n".join(md)))
    return paths


def export_tables(folder, fmt: str) -> list:
    """--format csv|json: the Pareto table and all trials as report_pareto.* and report_trials.*."""
    data = load_run(folder)
    paths = []
    for name, df in (("pareto", data.front), ("trials", data.trials)):
        text = df.to_csv(index=False) if fmt == "csv" else df.to_json(orient="records", indent=2)
        paths.append(data.folder.write_text(f"report_{name}.{fmt}", text))
    return paths
