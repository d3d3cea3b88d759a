"""A deterministic simulation of re-timing on a noisy machine: does the front hold still?

40 configs get a ground-truth accuracy and latency (seeded). Each simulated run times them as the
interleaved re-timing does, 8 rounds, and every figure is truth x the run's speed (0.7-1.5x: the machine
changes speed between runs) x the round's drift (a random walk, a few % a round) x multiplicative noise
(4 %) x, in 1 visit of 25, a burst (1.5-3x). The front of each of 20 runs is chosen twice: by the point
estimates (the median of the rounds, plain Pareto dominance) and by the rule beyond noise (paired
rounds, pareto.front_of, after racing the close calls as the run does: pareto.race with the run's
session count and time share); each rule's stability is the mean pairwise Jaccard of its 20 fronts.
"""

import itertools
import statistics

import numpy as np

from adasearch.config import DeploymentConfig
from adasearch.search.front.beyond_noise import SESSIONS, front_of, race
from adasearch.search.front.finalists import RACE_SESSIONS, RACE_SHARE, RACE_VISIT
from adasearch.search.front.pareto import pareto_front
from adasearch.search.trials import TrialRecord
from adasearch.spec import RunSpec

SPEC = RunSpec(objectives=["accuracy", "latency_p50_ms"])
CONFIGS, RUNS, ROUNDS = 40, 20, 8
# Per visit, once the round's drift is out (the demo's finalists' intervals, +-5 % over 8 rounds, hold the drift too).
NOISE = 0.04


def ground_truth(seed: int = 1234) -> list:
    """(accuracy, latency ms) per config: accuracy rises with latency and saturates, as on the demo, in
    steps of 1/450 (the demo's held-out images); latencies 0.5-2 ms, log-uniform, so the fast tail is dense."""
    rng = np.random.default_rng(seed)
    latency = np.exp(rng.uniform(np.log(0.5), np.log(2.0), CONFIGS))
    accuracy = 0.90 + 0.08 * (1 - np.exp(-(latency - 0.5) / 0.4)) + rng.normal(0, 0.006, CONFIGS)
    return [(round(a * 450) / 450, float(t)) for a, t in zip(accuracy, latency)]


class Machine:
    """One run's machine: its speed, and the drift, noise and bursts of every session of rounds."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.speed = self.rng.uniform(0.7, 1.5)

    def rounds(self, latency: np.ndarray) -> np.ndarray:
        """(configs, rounds) figures of one session (the configs timed together, interleaved)."""
        shape = (len(latency), ROUNDS)
        drift = np.exp(np.cumsum(self.rng.normal(0, 0.03, ROUNDS)))
        noise = np.exp(self.rng.normal(0, NOISE, shape))
        burst = np.where(self.rng.random(shape) < 0.04, self.rng.uniform(1.5, 3.0, shape), 1.0)
        return np.asarray(latency)[:, None] * self.speed * drift[None, :] * noise * burst


def records(truth: list, rounds: np.ndarray) -> list:
    out = []
    for i, ((acc, _), per_round) in enumerate(zip(truth, rounds)):
        metrics = {"accuracy": acc, "latency_p50_ms": float(np.median(per_round)), "macs": float(i),
                   SESSIONS: {"1": {"latency_p50_ms": per_round.tolist()}}}  # fmt: skip
        out.append(TrialRecord(i, DeploymentConfig(num_tokens=i + 1), {}, metrics, True, {}))
    return out


def mean_jaccard(fronts: list) -> float:
    return statistics.mean(len(a & b) / len(a | b) for a, b in itertools.combinations(fronts, 2))


def test_the_front_beyond_noise_holds_still_where_the_point_front_does_not():
    truth = ground_truth()
    point_fronts, noise_fronts = [], []
    raced = stayed = 0
    for seed in range(RUNS):
        machine = Machine(seed)
        recs = records(truth, machine.rounds([t for _, t in truth]))
        points = [(r.metrics["accuracy"], r.metrics["latency_p50_ms"]) for r in recs]
        point_fronts.append({recs[i].number for i in pareto_front(points, ["maximize", "minimize"])})
        budget = [RACE_SHARE / RACE_VISIT * CONFIGS]  # in race visits: the run's share of its re-timing

        def time_configs(configs, machine=machine, budget=budget):
            configs = configs[: int(budget[0])]  # as the run does: as many as its budget allows
            if len(configs) < 2:
                return None
            budget[0] -= len(configs)
            session = str(int(CONFIGS - budget[0]))  # a fresh id per session
            figures = machine.rounds([truth[c.num_tokens - 1][1] for c in configs])
            return session, {c: {"latency_p50_ms": f.tolist()} for c, f in zip(configs, figures)}

        pairs, still = race(recs, SPEC, time_configs, RACE_SESSIONS)
        raced, stayed = raced + pairs, stayed + still
        noise_fronts.append({r.number for r in front_of(recs, SPEC)})
    point, noise = mean_jaccard(point_fronts), mean_jaccard(noise_fronts)
    sizes = [len(f) for f in noise_fronts]
    print(f"\nmean pairwise Jaccard over {RUNS} simulated runs: point rule {point:.2f} (fronts of "
          f"{min(len(f) for f in point_fronts)}-{max(len(f) for f in point_fronts)}), beyond noise {noise:.2f} "
          f"(fronts of {min(sizes)}-{max(sizes)}); {raced / RUNS:.1f} pairs raced a run, "
          f"{stayed / RUNS:.1f} stayed equivalent")  # fmt: skip
    assert noise >= 0.9
    assert noise > point
    assert min(sizes) >= 5  # stability that does not come from a collapsed front
