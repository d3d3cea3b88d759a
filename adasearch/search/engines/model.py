"""engine: model, predict then verify.

When the space's accuracy is enumerable with the shared anytime passes (one pass per width setting
gives every config's exact accuracy, and MACs are closed form), only latency is unknown. This engine
predicts it for every config of the space with the target's latency model (search/latency_profile.py), and
proposes only the configs the prediction puts in play: the predicted front, its next layer, the MACs
front, the configs within finalists.NEAR of the front (the model's own error could put them on it) and
the near misses of timed constraints (finalists.candidates), at most VERIFY_LIMIT (or
search.trials, if smaller) per round.

Its trials carry the predicted timed figures (and the same in NAME_predicted columns) until the
runner re-times them, interleaved like every engine's finalists. The runner then tells the engine the
re-timed figures (`retimed`). If the prediction missed badly on them (more than BAD_SHARE of the
re-timed finalists off by more than MISS at p50), the summary says so and the engine falls back to
measuring: it proposes the configs that could still be on the front if they were as much faster than
predicted as the most over-predicted finalist was (at most the per-round limit), those are re-timed,
and so on for at most FALLBACK_ROUNDS rounds per run, and only while the last round's proposals reach the
front (when none does, the model's error lies off the front). A model that is wrong never decides silently.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from adasearch.checks import ENUMERABLE_LIMIT
from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.metrics import P50, THROUGHPUT, TIMED_METRICS, interval_columns, predicted_column
from adasearch.search import trials
from adasearch.search.context import RunContext
from adasearch.search.engines.base import Engine, Proposal
from adasearch.search.front.beyond_noise import front_of
from adasearch.search.front.finalists import NEAR, candidates, fold_twins
from adasearch.search.latency_profile import latency_model_for

VERIFY_LIMIT = 50  # configs proposed per round
MISS = NEAR  # a finalist whose re-timed p50 is off its prediction by more than this fraction is a miss
BAD_SHARE = 0.20  # more than this share of misses: the model is not trusted, and more configs are measured
FALLBACK_ROUNDS = 3
ROUNDS_ATTR = "model_fallback_rounds"  # the study's count of fallback rounds so far
PREDICTED = frozenset(predicted_column(n) for n in TIMED_METRICS)


def unusable(ctx: RunContext) -> Optional[str]:
    """Why engine: model cannot search this run (and what to use instead), or None when it can."""
    spec, space = ctx.spec, ctx.space
    if not spec.needs_latency:
        return "the spec times nothing (no latency or throughput metric), so every figure is exact already"
    if space.size() > ENUMERABLE_LIMIT:
        return f"the space has {space.size():,} configs, more than the {ENUMERABLE_LIMIT:,} it enumerates"
    if spec.needs_memory:
        return "peak memory is measured per config, not predicted"
    if spec.search.workers > 1:
        return "it runs in one process (search.workers: 1)"
    settings = space.pass_settings()
    accuracy = ctx.measurer.evaluator.accuracy
    if settings is None or not all(accuracy.shareable(c) for c in settings):
        return "its accuracy is not enumerable with shared passes (token counts off the trained block boundaries)"
    return None


class ModelEngine(Engine):
    name = "model"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        why = unusable(ctx)
        if why is not None:
            raise UserError(
                f"{ctx.spec.spec_file or 'spec'}: search.engine: model cannot search this run: {why}; "
                f"use engine: optuna (or exhaustive for a small space)"
            )
        ctx.measurer.accept_predicted = True  # its own predictions stand for the networks it proposed
        self.limit = min(VERIFY_LIMIT, ctx.spec.search.trials)  # configs proposed per round
        self.predicted: list = []  # TrialRecords of every config, timed figures predicted
        self.todo: list = []  # proposals of the current round
        self.proposed: set = set()  # configs of the last fallback round's proposals (this process's)
        # Fallback rounds are counted per study, so that resuming does not start the count again.
        self.rounds = int(ctx.study.user_attrs.get(ROUNDS_ATTR, 0)) if ctx.study is not None else 0
        self.optimism = 1.0  # measured / predicted of the most over-predicted finalist (fallback)
        self.anchored = None  # the latency model calibrated at the last re-timing

    # ---------------------------------------------------------------- prediction

    def _predict_all(self) -> None:
        ctx, evaluator = self.ctx, self.ctx.measurer.evaluator
        unique = ctx.space.unique()
        configs = list(unique)
        measured = evaluator.measure_accuracy_and_cost(configs)  # exact: one shared pass per width setting
        # Profiled after the accuracy passes: the re-timing it is compared with also runs after them.
        model, note = latency_model_for(ctx, configs)
        ctx.notes.append(note)
        # The references are re-timed with the finalists: the predictions shown beside the re-timed
        # figures use the calibration of that moment (the choice of candidates used the profile's).
        ctx.anchors = list(dict.fromkeys(DeploymentConfig.from_dict(r["config"]) for r in model.references))
        ctx.reanchor = lambda figures: self._reanchored(model, figures)
        for i, c in enumerate(configs):
            metrics = {k: v for k, v in measured[c].metrics().items() if v is not None}
            metrics.update(predicted_figures(evaluator.predict_latency(model, c)))
            viol = trials.violations(ctx.spec, metrics)
            self.predicted.append(trials.TrialRecord(-1 - i, c, unique[c], metrics, not viol, viol))
            if i % 200 == 0:
                ctx.status("predicting every config", i + 1, len(configs))
        ctx.status("predicting every config", len(configs), len(configs))

    def _reanchored(self, model, figures: dict):
        evaluator = self.ctx.measurer.evaluator
        anchored = self.anchored = evaluator.reanchor_latency(model, figures)
        return lambda config: {predicted_column(k): v for k, v in evaluator.predict_latency(anchored, config).items()}

    def _propose(self, records: list) -> list:
        measurer, encode = self.ctx.measurer, self.ctx.space.encode_params
        out = []
        for r in records[: self.limit]:
            if not measurer.reusable(trials.config_key(r.config)):
                timed = {k: v for k, v in r.metrics.items() if k in TIMED_METRICS or k in PREDICTED}
                out.append(Proposal(r.config, encode(r.params), predicted=timed))
        return out

    def _first_round(self) -> None:
        """Predict every config and propose the candidates, timing twins folded (finalists.fold_twins)."""
        self._predict_all()
        unfolded = fold_twins(self.predicted, self.ctx.spec, self.ctx.measurer.evaluator.timing_trace)
        folded = len(self.predicted) - len(unfolded)
        if folded:
            self.ctx.notes.append(
                f"timing twins: {folded} of {len(self.predicted)} configs run the same operations on the timing "
                f"images as another at least as good on every untimed objective, and are left to it"
            )
        self.todo = self._propose(candidates(unfolded, self.ctx.spec))  # one record per config: folded once

    def start(self) -> None:
        if not self.predicted:
            self._first_round()

    def ask(self) -> list:
        if not self.predicted:
            self._first_round()
        todo, self.todo = self.todo, []
        return todo

    def planned(self) -> int:
        return min(self.limit * (1 + self.rounds), self.ctx.space.size())

    # ---------------------------------------------------------------- verification

    def retimed(self, records: list) -> bool:
        """Compare prediction and re-timing on the finalists; on a bad miss, propose more to measure."""
        pairs = [
            (r.metrics[predicted_column(P50)], r.metrics[P50])
            for r in records
            if r.metrics.get(predicted_column(P50)) is not None and r.metrics.get(interval_columns(P50)[0]) is not None
        ]
        if not pairs or not self.predicted:
            return False
        errors = np.array([abs(p / m - 1) for p, m in pairs])
        misses = int((errors > MISS).sum())
        self.ctx.notes.append(
            f"latency model: {len(pairs) - misses} of {len(pairs)} re-timed finalists within ±{MISS:.0%} of the "
            f"prediction at p50 (median |error| {np.median(errors):.1%})"
        )
        if misses <= BAD_SHARE * len(pairs) or self.rounds >= FALLBACK_ROUNDS:
            if misses > BAD_SHARE * len(pairs):
                self.ctx.notes.append(f"latency model: still missing after {self.rounds} rounds of measuring more")
            return False
        if self.proposed and not self.proposed & {r.config for r in front_of(records, self.ctx.spec)}:
            # The configs most likely to be on the front if the model is that optimistic came out off it: its
            # error lies elsewhere than where the front is. A next round would chase the anchors' noise: the
            # in-play set moves with the calibration re-taken each round, and on a noisy machine the exit
            # configs' misses alone keep the share of misses up.
            self.ctx.notes.append(
                f"latency model: the {len(self.proposed)} configs measured in fallback round {self.rounds} all "
                f"stayed off the front; no more rounds"
            )
            return False
        self.rounds += 1
        self.ctx.study.set_user_attr(ROUNDS_ATTR, self.rounds)
        self.optimism = max(0.5, min(self.optimism, *(m / p for p, m in pairs)))
        self.todo = self._propose(self._in_play(records))
        self.proposed = {p.config for p in self.todo}
        missed = f"latency model: missed badly ({misses} of {len(pairs)} off by more than {MISS:.0%})"
        if self.todo:
            self.ctx.notes.append(
                f"{missed}: measuring {len(self.todo)} more configs that could be on the front if "
                f"{1 - self.optimism:.0%} faster than predicted"
            )
        else:
            self.ctx.notes.append(f"{missed}; no other config could be on the front even if that much faster")
        return bool(self.todo)

    def _in_play(self, records: list) -> list:
        """Unmeasured configs on the front when every prediction is scaled by the observed optimism."""
        known = {r.config for r in records}
        scaled = []
        for r in self.predicted:
            if r.config in known:
                continue
            metrics = dict(r.metrics)
            if self.anchored is not None:  # the calibration the finalists were judged by
                metrics.update(self.ctx.measurer.evaluator.predict_latency(self.anchored, r.config))
            for name in TIMED_METRICS & set(metrics):
                metrics[name] = metrics[name] / self.optimism if name == THROUGHPUT else metrics[name] * self.optimism
            viol = trials.violations(self.ctx.spec, metrics)
            scaled.append(trials.TrialRecord(r.number, r.config, r.params, metrics, not viol, viol))
        original = {r.config: r for r in self.predicted}  # proposed with the model's figures, not the scaled ones
        both = fold_twins(scaled + list(records), self.ctx.spec, self.ctx.measurer.evaluator.timing_trace)
        return [original[r.config] for r in front_of(both, self.ctx.spec) if r.config not in known]


def predicted_figures(figures: dict) -> dict:
    """The timed figures of a prediction, under their own names and as NAME_predicted."""
    return {**figures, **{predicted_column(k): v for k, v in figures.items()}}
