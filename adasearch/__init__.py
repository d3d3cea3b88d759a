"""adasearch: find the Pareto-optimal ways to deploy one trained AdaPerceiver.

The public names load lazily (PEP 562), so `import adasearch` and `adasearch --help` do not import
torch; `from adasearch import load_model` imports the model code then.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["AdaPerceiver", "AdaPerceiverConfig", "DeploymentConfig", "UserError", "load_model", "save_model"]

_WHERE = {
    "AdaPerceiver": "adasearch.model",
    "AdaPerceiverConfig": "adasearch.model",
    "load_model": "adasearch.model",
    "save_model": "adasearch.model",
    "DeploymentConfig": "adasearch.config",
    "UserError": "adasearch.errors",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'adasearch' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
