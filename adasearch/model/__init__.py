"""The AdaPerceiver network and its loading."""

from adasearch.model.adaperceiver import (
    AdaPerceiver,
    AdaPerceiverConfig,
    AnytimeOutput,
    ClassificationOutput,
    LayerPlan,
)
from adasearch.model.loading import load_model, save_model

__all__ = [
    "AdaPerceiver",
    "AdaPerceiverConfig",
    "AnytimeOutput",
    "ClassificationOutput",
    "LayerPlan",
    "load_model",
    "save_model",
]
