"""Serving: load a run's configs once and classify under a latency budget. Imports no search code."""

from adasearch.serving.deployment import Deployment, Prediction

__all__ = ["Deployment", "Prediction"]
