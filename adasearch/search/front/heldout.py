"""Held-out figures of the finalists, and certified constraints (see adasearch/stats.py for the methods).

The search part chose the front, so its accuracies are optimistic (the winner's curse). Every Pareto
config and every re-timed candidate is evaluated again on the held-out part, which the search never
saw, together with the full config (max tokens, width and depth, no exit) on the same images:

- test_accuracy with its Clopper-Pearson 95 % interval, and test_samples;
- accuracy_drop against the full config, with its exact paired interval, and whether it is
  significant (exact McNemar, 5 %);
- disagreement: the fraction of images whose top-1 differs from the full config's (needs no labels).

A certified constraint {max: delta, confidence: 1 - epsilon} on accuracy_drop or disagreement is decided
by Pareto Testing: the front, ordered from the most to the least MACs, is tested in that fixed sequence
with Hoeffding-Bentkus p-values at level epsilon, stopping at the first failure. The loss certified for
accuracy_drop is the rate of images the full config gets right and the config gets wrong: it bounds the
drop from above and, unlike the drop itself, is a [0, 1] loss per image, which the p-value needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adasearch import metrics
from adasearch.config import DeploymentConfig
from adasearch.search.trials import config_key
from adasearch.stats import clopper_pearson, fixed_sequence, hb_p_value, mcnemar_p, paired_difference

SIGNIFICANCE = 0.05
RUNTIME_CHECK_BATCHES = 8  # batches on which a runtime's logits are compared with eager's
METHOD = "Learn-then-Test: Hoeffding-Bentkus p-values, fixed-sequence testing along the front (Pareto Testing)"


@dataclass
class Outcome:
    """Per-sample comparison of one config with the full config on the held-out images."""

    correct: torch.Tensor  # (n,) bool
    predictions: torch.Tensor  # (n,) top-1 class


def compare(config_outcome: Outcome, full: Outcome) -> dict:
    """The held-out figures of one config (metric name -> value), and the drop's significance flag."""
    n = len(config_outcome.correct)
    k = int(config_outcome.correct.sum())
    disagreement = float((config_outcome.predictions != full.predictions).float().mean())
    b = int((full.correct & ~config_outcome.correct).sum())  # full right, config wrong
    c = int((~full.correct & config_outcome.correct).sum())
    low, high = clopper_pearson(k, n)
    drop, drop_low, drop_high = paired_difference(b, c, n)
    acc_low, acc_high = metrics.interval_columns(metrics.TEST_ACCURACY)
    d_low, d_high = metrics.interval_columns(metrics.DROP)
    return {
        metrics.TEST_ACCURACY: k / n, acc_low: low, acc_high: high, metrics.TEST_SAMPLES: n,
        metrics.DROP: drop, d_low: drop_low, d_high: drop_high,
        metrics.DISAGREEMENT: disagreement,
        metrics.SIGNIFICANT: mcnemar_p(b, c) < SIGNIFICANCE,
        "_loss": {metrics.DROP: b / n, metrics.DISAGREEMENT: disagreement},  # what certify() tests
    }  # fmt: skip


def outcomes(engine, configs: list) -> tuple[dict, Outcome]:
    """{config: Outcome} on the engine's data, and the full config's Outcome."""
    full = DeploymentConfig()
    results = engine.measure(list(dict.fromkeys([*configs, full])), keep_predictions=True)
    labels = engine.data.labels()

    def outcome(c):
        pred = results[c].predictions
        return Outcome(pred == labels, pred)

    return {c: outcome(c) for c in configs}, outcome(full)


def runtime_outcomes(evaluator, configs: list) -> tuple[dict, Outcome, dict]:
    """outcomes() as the spec's runtime computes them: every held-out image through the runtime's forward
    at the timing batch size (the last batch padded), and {config: {RUNTIME_DIFF, RUNTIME_FLAG}}: the largest
    logit difference from eager (same model and dtype) on the first batches, flagged beyond RUNTIME_ATOL."""
    data = evaluator.heldout
    labels = data.labels()
    b = evaluator.hardware.batch_size
    batches = [x.to(evaluator.device, evaluator.dtype) for x, _ in data.batches(b)]
    atol = metrics.RUNTIME_ATOL[evaluator.hardware.dtype]
    full = DeploymentConfig()
    preds, numerics = {}, {}
    with torch.inference_mode():
        for c in dict.fromkeys([*configs, full]):
            plan = evaluator.model.plan(**c.to_dict())
            fn = evaluator.runtime.forward(plan, evaluator.latency_batches()[0])  # as timed: no new build
            out, diff = [], 0.0
            for i, x in enumerate(batches):
                n = len(x)
                padded = x if n == b else torch.cat([x, x[-1:].expand(b - n, *x.shape[1:])])
                logits = fn(padded)[:n].float()
                if i < RUNTIME_CHECK_BATCHES:
                    eager = evaluator.model.forward_plan(x, plan).logits.float()
                    diff = max(diff, float((logits.to(eager.device) - eager).abs().max()))
                out.append(logits.argmax(-1).cpu())
            preds[c] = torch.cat(out)
            numerics[c] = {metrics.RUNTIME_DIFF: diff, metrics.RUNTIME_FLAG: diff > atol}
    by_config = {c: Outcome(preds[c] == labels, preds[c]) for c in configs}
    return by_config, Outcome(preds[full] == labels, preds[full]), numerics


def certify(front: list, figures: dict, metric: str, delta: float, confidence: float) -> dict:
    """{config key: guarantee} for the configs of `front`, (config key, MACs) pairs, that Pareto Testing
    certifies. `figures` maps config keys to compare()'s output."""
    keys = [key for key, _ in sorted(front, key=lambda item: -item[1])]  # most expensive first
    n = figures[keys[0]][metrics.TEST_SAMPLES] if keys else 0
    p_values = [hb_p_value(figures[k]["_loss"][metric], delta, n) for k in keys]
    accepted = fixed_sequence(p_values, 1 - confidence)
    guarantee = {"metric": metric, "max": delta, "confidence": confidence, "samples": n, "method": METHOD}
    return {k: {**guarantee, "p_value": p} for k, p in zip(keys[:accepted], p_values[:accepted])}


def evaluate(ctx, front: list, candidates: list) -> tuple[dict, dict]:
    """({config key: held-out figures}, {config key: guarantee}) for the front and the re-timed
    candidates; both empty when the run has no held-out part."""
    evaluator = ctx.measurer.evaluator
    if evaluator.heldout is None:
        return {}, {}
    configs = list(dict.fromkeys(r.config for r in [*front, *candidates]))
    if evaluator.runtime.name == "eager":
        by_config, full = outcomes(evaluator.heldout_accuracy(), configs)
        numerics = {}
    else:  # what ships computes the predictions: its numerics, not eager's, make the held-out figures
        by_config, full, numerics = runtime_outcomes(evaluator, configs)
    figures = {config_key(c): {**compare(o, full), **numerics.get(c, {})} for c, o in by_config.items()}
    guarantees = {}
    for metric, bound in ctx.spec.certified.items():
        items = [(config_key(r.config), r.metrics[metrics.COMPUTE]) for r in front]
        guarantees = certify(items, figures, metric, bound.max, bound.confidence)
    return figures, guarantees


def public(figures: dict) -> dict:
    """compare()'s figures as written to results files (without the internal losses)."""
    return {k: v for k, v in figures.items() if not k.startswith("_")}
