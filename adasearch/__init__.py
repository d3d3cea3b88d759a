"""adasearch: find the Pareto-optimal ways to deploy one trained AdaPerceiver."""
from adasearch.config import DeploymentConfig
from adasearch.errors import UserError
from adasearch.model import AdaPerceiver, AdaPerceiverConfig, load_model, save_model

__version__ = "0.1.0"
__all__ = ["AdaPerceiver", "AdaPerceiverConfig", "DeploymentConfig", "UserError", "load_model", "save_model"]
