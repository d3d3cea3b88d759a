"""Why a front moves between runs: the paired comparisons of the configs every run re-timed, run by run.

    python bench/front_stability.py --keep DIR     # first: keeps the runs' results folders
    python bench/front_pairs.py DIR [--runs 5] [--name front_pairs]

For each machine state (quiet, busy) and each pair of configs that every run re-timed in shared rounds,
the paired test of measure/paired.py on latency p50 (median per-round log-ratio, 95 % percentile
bootstrap interval, 3 % practical threshold) is taken in each run, on the rounds that run stored. The
table says how many pairs every run decided alike (separated the same way, or left within noise), how
many some runs separated and others did not (a front can move on those), how many two runs separated
in opposite directions, and, as medians over the pairs, the between-run standard deviation of the
log-ratio against the within-run 95 % interval's half-width (over 1.96, the standard deviation the
interval implies). Between-run spread well above the implied one would mean the per-run test is
overconfident; below it, the pairs that flip lack rounds, not a sound test. Last, how far the machine's
speed moved between the sessions of one run: for each later session (a race, or a re-timing of configs
that joined the front), the median over its configs (3 at least) of a config's median figure there over
its median in its first session; the smallest and largest over all runs.
"""

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import save_table  # noqa: E402

from adasearch.measure import paired  # noqa: E402
from adasearch.metrics import P50  # noqa: E402
from adasearch.run_folder import RunFolder  # noqa: E402
from adasearch.search import trials  # noqa: E402
from adasearch.search.front.beyond_noise import SESSIONS  # noqa: E402


def stored_rounds(folder: Path) -> dict:
    """{config label: {session: {metric: [figure per round]}}} of a results folder's re-timed configs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    final = trials.retimed_figures(optuna.load_study(study_name=name, storage=storage))
    labels = RunFolder(folder).read_trials().set_index("trial")["config"].to_dict()
    return {labels[int(number)]: entry[SESSIONS] for number, entry in final.items() if SESSIONS in entry}


def pair_figures(runs: list) -> list:
    """[(pair, [paired.Comparison per run])] for the pairs every run re-timed in shared rounds."""
    common = sorted(set.intersection(*(set(r) for r in runs)))
    out = []
    for a, b in itertools.combinations(common, 2):
        shared = [paired.shared_rounds(r[a], r[b], P50) for r in runs]
        if all(ra for ra, _ in shared):
            out.append(((a, b), [paired.compare(ra, rb) for ra, rb in shared]))
    return out


def session_shifts(runs: list) -> list:
    """Per later session of every run: the median over its configs of (median there / median in its first session)."""
    shifts = []
    for run in runs:
        by_session: dict = {}
        for sessions in run.values():
            medians = {
                s: statistics.median(v for v in f[P50] if v is not None) for s, f in sessions.items() if f.get(P50)
            }
            first = min(medians, key=int, default=None)
            for s, m in medians.items():
                if s != first:
                    by_session.setdefault((first, s), []).append(m / medians[first])
        shifts += [statistics.median(v) for v in by_session.values() if len(v) >= 3]
    return shifts


def summary(pairs: list) -> list:
    signs = [{c.sign for c in comparisons} for _, comparisons in pairs]
    between = [statistics.stdev(math.log(c.ratio) for c in comparisons) for _, comparisons in pairs]
    half = [statistics.mean((math.log(c.high) - math.log(c.low)) / 2 for c in cs) for _, cs in pairs]
    rounds = [statistics.mean(c.rounds for c in comparisons) for _, comparisons in pairs]
    return [
        len(pairs),
        sum(len(s) == 1 for s in signs),
        sum(len(s) > 1 and 0 in s for s in signs),
        sum({1, -1} <= s for s in signs),
        f"{statistics.median(between):.3f}",
        f"{statistics.median(half) / 1.96:.3f}",
        f"{statistics.median(half):.3f}",
        f"{statistics.median(rounds):.0f}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a --keep folder of bench/front_stability.py")
    parser.add_argument("--runs", type=int, default=5, help="runs per machine state (default 5)")
    parser.add_argument("--name", default="front_pairs", help="the table's name in bench/results")
    parser.add_argument("--states", nargs="+", choices=("quiet", "busy"), default=["quiet", "busy"],
                        help="the machine states to read, default both")  # fmt: skip
    args = parser.parse_args()
    rows = []
    for load in args.states:
        runs = [stored_rounds(args.folder / f"{load}-{i}") for i in range(args.runs)]
        shifts = session_shifts(runs)
        moved = f"{min(shifts):.2f}-{max(shifts):.2f}x ({len(shifts)})" if shifts else "-"
        rows.append([load, args.runs, *summary(pair_figures(runs)), moved])
    save_table(
        args.name,
        f"The paired comparisons behind the fronts of {args.folder.name}, run by run (latency p50)",
        [
            "machine",
            "runs",
            "pairs re-timed by every run",
            "decided alike by every run",
            "separated by some runs only",
            "separated both ways",
            "between-run sd of log-ratio (median)",
            "sd the interval implies (median)",
            "95 % half-width (median)",
            "rounds per run (median)",
            "speed between sessions of a run (sessions)",
        ],
        rows,
        [
            "A pair is separated when its whole 95 % bootstrap interval lies beyond the 3 % practical threshold "
            "(measure/paired.py); the front moves on the pairs separated by some runs only.",
            "sd the interval implies = half-width / 1.96. Between-run sd below it: the runs agree within their "
            "intervals, and a flip comes from too few rounds to separate the pair every time.",
        ],
    )


if __name__ == "__main__":
    main()
