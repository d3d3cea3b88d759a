"""Does the same search give the same configs twice? examples/demo-cpu.yaml run RUNS times into fresh
folders, on a quiet machine and with one core kept busy.

    python bench/front_stability.py [--runs 5] [--keep DIR] [--states quiet busy]

Prints the mean pairwise Jaccard index of the Pareto config sets (|A and B| / |A or B|, over config
labels), the spread of the fronts' hypervolume (accuracy max, p50 min; one reference point for all
runs: the lowest accuracy and 1.1x the highest p50 on any of the fronts), the pairs each run raced
and how many stayed equivalent (from run.yaml's notes), the contention each run saw, and, below the
table, each config's share of the runs that put it on the front (and of those that re-timed it, and that
found it over a timed bound such as the spec's latency_p90_ms max), and the Jaccard of the fronts that the
runs' stored figures give with the spec's timed bounds dropped (unbounded_front): how much of a row's
instability is which configs meet a latency bound, and how much their order. "Busy"
runs a bounded `yes > /dev/null` that this script starts before and stops after those runs (by PID).
`--keep DIR` keeps the runs' folders; `--reread DIR` makes the table again from them.
"""

import argparse
import collections
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).parent))
from _load import one_core_busy
from _table import save_table

from adasearch.metrics import TIMED_METRICS
from adasearch.search.front.pareto import hypervolume

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
SPEC = ROOT / "examples" / "demo-cpu.yaml"
RUN_TIMEOUT_S = 1800  # one run of the demo, at most


class Run(NamedTuple):
    """What the table reads from one run's results folder."""

    front: list  # pareto.json's rows
    raced: int  # close pairs raced (run.yaml's notes)
    stayed: int  # of them, pairs that stayed equivalent
    contention: dict  # run.yaml's environment.contention
    retimed: set  # labels of the configs it re-timed
    over_bound: set  # of those, the labels of configs its re-timed figures put over a timed constraint's bound
    unbounded: set  # labels of the front its re-timed figures give with no timed bound (unbounded_front)


def run_once(out: Path, cache: Path, spec: Path = SPEC) -> Run:
    """read_run of one fresh run into `out`."""
    env = {**os.environ, "ADASEARCH_CACHE": str(cache)}
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(spec), "--output", str(out), "--no-progress"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    return read_run(out, spec)


def read_run(out: Path, spec: Path = SPEC) -> Run:
    from adasearch.run_folder import RunFolder

    folder = RunFolder(out)
    run = folder.read_run()
    notes = " ".join(run.get("notes") or [])
    trials = folder.read_trials()
    retimed = trials[trials["timing"] == "re-timed"]
    broke = retimed["violations"].map(lambda text: isinstance(text, str) and any(m in text for m in TIMED_METRICS))
    return Run(
        front=folder.read_pareto()["pareto"],
        raced=sum(int(x) for x in re.findall(r"racing: (\d+) close pairs", notes)),
        stayed=sum(int(x) for x in re.findall(r"(\d+) stayed equivalent", notes)),
        contention=(run.get("environment") or {}).get("contention") or {},
        retimed=set(retimed["config"]),
        over_bound=set(retimed.loc[broke, "config"]),
        unbounded=unbounded_front(out, spec),
    )


def unbounded_front(out: Path, spec_path: Path) -> set:
    """Labels of the front (beyond noise) of the run's re-timed configs, from the figures its study stored, with
    the spec's timed constraints dropped (such as latency_p90_ms max): what the front would be had no latency
    bound cut through it. Its Jaccard over runs shows the ordering's flips apart from feasibility's."""
    import optuna

    from adasearch.search import trials
    from adasearch.search.front.beyond_noise import front_of
    from adasearch.spec import load_spec

    spec = load_spec(spec_path)
    kept = {name: bound for name, bound in spec.constraints.items() if name not in TIMED_METRICS}
    spec = spec.model_copy(update={"constraints": kept})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.run_name, storage=f"sqlite:///{out / 'study.db'}")
    recs = trials.records(study, spec, trials.retimed_figures(study))
    return {r.config.label() for r in front_of([r for r in recs if r.timing == trials.RETIMED], spec)}


def stability(fronts: list) -> tuple:
    sets = [{json.dumps(row["config"], sort_keys=True) for row in f} for f in fronts]
    jaccard = pairwise_jaccard(sets)
    points = [[(r["metrics"]["accuracy"], r["metrics"]["latency_p50_ms"]) for r in f] for f in fronts]
    everything = [x for p in points for x in p]
    if not everything:  # no run found a feasible config (a machine too busy for the latency bound)
        return statistics.mean(jaccard), [0.0] * len(points), [len(s) for s in sets]
    ref = (min(a for a, _ in everything), 1.1 * max(t for _, t in everything))
    hv = [hypervolume(p, ["maximize", "minimize"], ref) for p in points]
    return statistics.mean(jaccard), hv, [len(s) for s in sets]


def pairwise_jaccard(sets: list) -> list:
    """|A and B| / |A or B| for every pair of the sets. Two empty fronts (no feasible config: a machine too busy
    for the latency bound) are not "the same front": NaN."""
    return [len(a & b) / len(a | b) if a | b else math.nan for a, b in itertools.combinations(sets, 2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per machine state (default {RUNS})")
    parser.add_argument("--cache", type=Path, help="an accuracy cache the demo filled already: no warm-up run")
    parser.add_argument("--spec", type=Path, default=SPEC, help=f"the run spec (default {SPEC.relative_to(ROOT)})")
    parser.add_argument("--name", default="front_stability", help="the table's name in bench/results")
    parser.add_argument("--keep", type=Path, help="a new folder to keep the runs' results folders in (default: none)")
    parser.add_argument("--reread", type=Path, help="a --keep folder of an earlier bench: its table again, no runs")
    parser.add_argument("--states", nargs="+", choices=("quiet", "busy"), default=["quiet", "busy"],
                        help="the machine states to run (or reread), default both")  # fmt: skip
    args = parser.parse_args()
    runs, spec = args.runs, args.spec.resolve()
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists; name a new folder")
    if args.reread is not None and not args.reread.is_dir():
        parser.error(f"--reread {args.reread}: no such folder; name one that --keep made")
    rows, shares = [], collections.defaultdict(dict)
    retimed, over = collections.defaultdict(dict), collections.defaultdict(dict)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.reread or args.keep or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        cache = args.cache or tmp / "cache"
        if args.cache is None and args.reread is None:
            run_once(tmp / "warm", cache, spec)  # fills the accuracy cache: every run below only times
        for load in args.states:
            if args.reread is not None:
                done, wall = [read_run(tmp / f"{load}-{i}", spec) for i in range(runs)], None
            else:
                done, wall = run_state(load, runs, tmp, cache, spec)
            rows.append(summarise(load, done, wall))
            tally(load, done, shares, retimed, over)
    share_notes = [
        "share of runs with each config on the front (quiet / busy): "
        + "; ".join(f"{label} {s.get('quiet', 0):.0%} / {s.get('busy', 0):.0%} (re-timed "
                    f"{retimed[label].get('quiet', 0):.0%} / {retimed[label].get('busy', 0):.0%}; over a timed bound "
                    f"{over[label].get('quiet', 0):.0%} / {over[label].get('busy', 0):.0%})"
                    for label, s in sorted(shares.items(), key=lambda kv: -sum(kv[1].values())))
    ]  # fmt: skip
    save_table(
        args.name,
        f"Front stability: {spec.name} run {runs} times into fresh folders",
        [
            "machine",
            "runs",
            "Pareto configs per run",
            "mean pairwise Jaccard",
            "hypervolume spread",
            "pairs raced / stayed equivalent, per run",
            "others' CPU share / reference CV / inflation, per run",
            "s per run",
            "Jaccard (fronts) with no timed bound",
        ],  # fmt: skip
        rows,
        share_notes
        + [
            "Jaccard over the sets of Pareto configs (their knobs); 1.0 = the same configs every run. Target: "
            ">= 0.8 quiet, >= 0.6 busy; before interleaved re-timing and the tie rule: 0.29-0.40 quiet, 0-0.17 busy.",
            "Hypervolume spread = (max - min) / mean over the runs, with one reference point for all of them.",
            "Jaccard with no timed bound: of the fronts each run's stored figures give, among its re-timed configs, "
            "with the spec's timed constraints dropped (front sizes in brackets); the rest of the gap to the "
            "row's Jaccard is configs that meet a latency bound in some runs and not others.",
            "busy: `yes > /dev/null` keeps one of the 2 cores busy during those runs.",
            "Contention each run saw while timing (run.yaml's environment.contention, measure/contention.py): the "
            "share of the CPUs others used (steal included), the re-timed configs' round-to-round CV (median), and "
            "their median round over their quietest, minus 1. The busy row's share includes the `yes`.",
            f"Accuracy is cached after a first warm-up run; the {runs} runs of each row differ only in timing.",
            "The front beyond noise: timed objectives count only when the paired per-round test separates two "
            "configs (measure/paired.py, 3 % practical threshold); close calls raced in more interleaved rounds "
            "(search/front/finalists.py); configs equal on accuracy that no timed objective separates are one "
            "point, the fewest MACs standing for it (from 2026-12-07's front_stability_onepoint on). p50: each "
            "timing batch's median, then their median (from that table on; before, the median of all calls).",
            "`auto` picks engine: model for this spec: every config predicted by a fresh latency model of the "
            "target, the candidates re-timed interleaved. Before it (exhaustive, brief per-trial timing, "
            "interleaved re-timing, tie rule, MACs-proxy candidates): 0.48-0.63 quiet, 0.32-0.56 busy.",
        ],
    )


def run_state(load: str, runs: int, folder: Path, cache: Path, spec: Path) -> tuple:
    """(a Run of each run, seconds per run) of `runs` fresh runs on a quiet or a busy machine."""
    # The load's timeout is for a bench killed before it can stop the load; leaving the block stops it otherwise.
    # It must outlast every run (each allowed RUN_TIMEOUT_S): at 1800 s in all it ran out in the 3rd of 5.
    with one_core_busy(load == "busy", runs * RUN_TIMEOUT_S + 60) as still_busy:
        start = time.perf_counter()
        done = []
        for i in range(runs):
            still_busy(f"busy run {i}")
            done.append(run_once(folder / f"{load}-{i}", cache, spec))
        return done, (time.perf_counter() - start) / runs


def summarise(load: str, done: list, wall) -> list:
    """The table's row for the runs of one machine state."""
    jaccard, hv, sizes = stability([run.front for run in done])
    spread = (max(hv) - min(hv)) / statistics.mean(hv) if any(hv) else float("nan")
    raced = ", ".join(f"{run.raced}/{run.stayed}" for run in done)
    contention = ", ".join(_contention(run.contention) for run in done)
    unbounded = f"{statistics.mean(pairwise_jaccard([run.unbounded for run in done])):.2f} "
    unbounded += f"({', '.join(str(len(run.unbounded)) for run in done)})"
    return [load, len(done), ", ".join(map(str, sizes)), f"{jaccard:.2f}", f"{100 * spread:.1f} %", raced, contention,
            "-" if wall is None else f"{wall:.0f}", unbounded]  # fmt: skip


def tally(load: str, done: list, shares: dict, retimed: dict, over: dict) -> None:
    """Each config's share of the runs that put it on the front, of those that re-timed it, and of those whose
    re-timed figures put it over a timed bound: a config that flips although every run re-timed it and none
    found it over a bound flips on the paired comparisons; one that some runs did not re-time flips on the
    latency model's choice of candidates; one over a bound in some runs flips on its feasibility."""
    for label, n in collections.Counter(_label(row) for run in done for row in run.front).items():
        shares[label][load] = n / len(done)
    for label, n in collections.Counter(label for run in done for label in run.retimed).items():
        retimed[label][load] = n / len(done)
    for label, n in collections.Counter(label for run in done for label in run.over_bound).items():
        over[label][load] = n / len(done)


def _contention(c: dict) -> str:
    def figure(key: str, fmt: str) -> str:
        return "-" if c.get(key) is None else format(c[key], fmt)

    return f"{figure('other_cpu_share', '.2f')}/{figure('reference_cv', '.2f')}/{figure('inflation', '.0%')}"


def _label(row: dict) -> str:
    from adasearch.config import DeploymentConfig

    return DeploymentConfig.from_dict(row["config"]).label()


if __name__ == "__main__":
    main()
