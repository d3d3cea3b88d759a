"""How long does the demo search take against an earlier commit's, on the same machine in the same hour?

    python bench/search_time.py [--base 48f45ca] [--runs 3] [--states quiet busy]

Issue #19's time target is relative ("at most 1.5x today's demo run"), and this VM's speed changes from
day to day by more than that, so the run it names cannot be re-timed on another day. This bench checks
out --base (default: the commit #19 was filed against) into a temporary git worktree and runs
`adasearch run examples/demo-cpu.yaml` alternately with that tree's code and this tree's, --runs times
each, in every machine state, each run into a fresh folder. Each tree gets its own accuracy cache, filled
by one run that is not counted (a warm-up), so that both sides time the search as a resumed user would.
Prints, per state, each side's wall seconds per run (median, min-max), the ratio of the medians (this
tree over base), and where a side's runs spent their time: the median seconds of each phase in run.yaml's
`time_s` (search/phases.py; code older than 1add09b does not write it). "Busy" keeps one core busy
(`yes > /dev/null`, started and stopped by PID) for its runs.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _load import one_core_busy
from _table import save_table

ROOT = Path(__file__).resolve().parents[1]
BASE = "48f45ca"  # the code #19's "today's demo run" (76 s quiet, 169 s busy, 2026-12-04) ran
TARGET = 1.5
RUN_TIMEOUT_S = 1800


def run_once(tree: Path, cache: Path, out: Path) -> float:
    """Wall seconds of one demo run of `tree`'s code into `out`."""
    env = {**os.environ, "ADASEARCH_CACHE": str(cache), "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "cli.py", "run", "examples/demo-cpu.yaml", "--output", str(out), "--no-progress"]
    began = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    return time.perf_counter() - began


def phase_medians(docs: list) -> str:
    """Each phase's median seconds over runs' run.yaml time_s, in the order the runs list them; "" when none has it."""
    names = list(dict.fromkeys(k for d in docs for k in d if k != "total"))
    return ", ".join(f"{k} {statistics.median(d.get(k, 0.0) for d in docs):.0f}" for k in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help=f"the commit to compare with (default {BASE})")
    parser.add_argument("--runs", type=int, default=3, help="counted runs per side and state (default 3)")
    parser.add_argument("--states", nargs="+", choices=("quiet", "busy"), default=["quiet", "busy"])
    parser.add_argument("--name", default="search_time", help="the table's name in bench/results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adasearch-time-") as tmp:
        tmp = Path(tmp)
        base_tree = tmp / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
                       check=True, capture_output=True)  # fmt: skip
        try:
            trees = {args.base: base_tree, "this tree": ROOT}
            for side, tree in trees.items():  # warm-up: fills each side's accuracy cache
                print(f"warm-up, {side}: {run_once(tree, tmp / f'cache-{tree.name}', tmp / f'warm-{tree.name}'):.0f} s")
            rows = []
            for state in args.states:
                times: dict = {side: [] for side in trees}
                phases: dict = {side: [] for side in trees}
                with one_core_busy(state == "busy", 2 * args.runs * RUN_TIMEOUT_S) as still_busy:
                    for i in range(args.runs):
                        for side, tree in trees.items():  # alternating: both sides see the same hour's machine
                            out = tmp / f"{state}-{tree.name}-{i}"
                            times[side].append(run_once(tree, tmp / f"cache-{tree.name}", out))
                            phases[side].append(yaml.safe_load((out / "run.yaml").read_text()).get("time_s") or {})
                            still_busy(f"{state} run {i + 1} of {side}")
                            print(f"{state} {i + 1}/{args.runs} {side}: {times[side][-1]:.0f} s", flush=True)
                medians = {side: statistics.median(t) for side, t in times.items()}
                ratio = medians["this tree"] / medians[args.base]
                for side, t in times.items():
                    spread, shown = f"{min(t):.0f}-{max(t):.0f}", f"{ratio:.2f}" if side == "this tree" else ""
                    split = phase_medians(phases[side])
                    rows.append([state, side, len(t), f"{medians[side]:.0f}", spread, shown, split])
                rows[-1][-2] += f" ({'met' if ratio <= TARGET else 'missed'}: target <= {TARGET})"
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    save_table(
        args.name,
        f"Demo search wall time against {args.base}, alternating runs in the same hour",
        ["machine", "code", "runs", "median s", "min-max s", "ratio of medians", "median s by phase (run.yaml time_s)"],
        rows,
        [f"`python bench/search_time.py --base {args.base} --runs {args.runs}`; this tree at {head.stdout.strip()}"
         " (uncommitted changes included)",
         "each side's accuracy cache filled by one uncounted run first; examples/demo-cpu.yaml, 2 threads"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
