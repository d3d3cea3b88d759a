"""DeploymentConfig: one way to run the model. Frozen, hashable, and YAML/JSON round-trips.

Each knob is either global (a scalar) or per layer (a tuple with one value per block):
    num_tokens   int | tuple[int, ...] (non-increasing schedule)        None = max_latent_tokens
    token_grans  tuple[int, ...] | tuple[tuple[int, ...], ...]           None = the checkpoint's list
    mat_dim      int | tuple[int | None, ...]                            None = full width
    depth        int                                                     None = all blocks
    depth_tau    float | tuple[float | None, ...]                        None = no early exit

The global-only form maps 1:1 onto the reference forward kwargs, so an exported config also drives
the reference implementation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import yaml

from adasearch.errors import KnobError, UserError
from adasearch.yaml_io import MAX_BYTES, parse_yaml

KNOBS = ("num_tokens", "token_grans", "mat_dim", "depth", "depth_tau")


def _freeze(v):
    """Lists become tuples (hashable); a list of lists becomes a tuple of tuples."""
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


@dataclass(frozen=True)
class DeploymentConfig:
    num_tokens: Union[int, tuple, None] = None
    token_grans: Optional[tuple] = None
    mat_dim: Union[int, tuple, None] = None
    depth: Optional[int] = None
    depth_tau: Union[float, tuple, None] = None

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))
        tau = self.depth_tau
        if isinstance(tau, int) and not isinstance(tau, bool):
            object.__setattr__(self, "depth_tau", float(tau))  # so 1 and 1.0 hash alike

    # ---------------------------------------------------------------- structure

    @property
    def is_global(self) -> bool:
        """True when every knob is one value for all layers (the reference's form)."""
        grans_global = self.token_grans is None or not any(isinstance(g, tuple) for g in self.token_grans)
        return grans_global and not any(
            isinstance(getattr(self, k), tuple) for k in ("num_tokens", "mat_dim", "depth_tau")
        )

    def reference_kwargs(self) -> dict:
        """Kwargs for the reference hub class's forward. Only for global configs.

        The reference ignores `depth` when `depth_tau` is given, so a config that uses both (exit
        early, but never run past depth) has no reference equivalent.
        """
        if not self.is_global:
            raise KnobError("this config has per-layer knobs; the reference forward takes global knobs only")
        if self.depth_tau is not None and self.depth is not None:
            raise KnobError("the reference ignores depth when depth_tau is set; this config uses both")
        return self.to_dict()

    def validate(self, model_cfg) -> None:
        """Raise KnobError naming the knob when this config does not fit the model."""
        from adasearch.model.adaperceiver import make_plan

        make_plan(model_cfg, **self.to_dict())

    def replace(self, **changes) -> DeploymentConfig:
        return DeploymentConfig(**{**self.to_dict(), **changes})

    def label(self) -> str:
        """Short human name, e.g. `N64-w624-d12-tau0.9`."""

        def short(v):
            if isinstance(v, tuple):
                return "[" + ",".join(short(x) for x in v) + "]"
            return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

        parts = [
            f"N{short(self.num_tokens) if self.num_tokens is not None else 'max'}",
            f"w{short(self.mat_dim) if self.mat_dim is not None else 'full'}",
            f"d{short(self.depth) if self.depth is not None else 'all'}",
        ]
        if self.depth_tau is not None:
            parts.append(f"tau{short(self.depth_tau)}")
        if self.token_grans is not None:
            parts.append(f"g{short(self.token_grans)}")
        return "-".join(parts)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict:
        """The knobs as plain data (lists where per layer): also AdaPerceiver.forward's keyword arguments."""
        return {k: _thaw(getattr(self, k)) for k in KNOBS}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> DeploymentConfig:
        if not isinstance(d, dict):
            raise UserError(f"{where}: a deployment config must be a mapping of {list(KNOBS)}")
        unknown = [k for k in d if k not in KNOBS]
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed: {list(KNOBS)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> DeploymentConfig:
        return cls.from_dict(_unwrap(parse_document(text, where, as_json=True)), where)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str = "config") -> DeploymentConfig:
        return cls.from_dict(_unwrap(parse_document(text, where)), where)

    @classmethod
    def load(cls, path: Union[str, Path]) -> DeploymentConfig:
        return cls.from_dict(_unwrap(read_document(path)), str(path))


def _unwrap(data):
    """Exported deployment files wrap the knobs ("config") with their measurements."""
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        return data["config"]
    return data


def parse_document(text: str, where: str, as_json: bool = False):
    """JSON or YAML text as Python data, or a one-line UserError naming `where`."""
    if not as_json:
        return parse_yaml(text, where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except RecursionError:
        raise UserError(f"{where}: malformed JSON (nested too deeply)")


def read_document(path: Union[str, Path]):
    """A deployment file (.json as JSON, anything else as YAML) as Python data, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such deployment config file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(
                f"{path}: {path.stat().st_size:,} bytes is too large for a deployment config; at most {MAX_BYTES:,}"
            )
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it as text ({type(e).__name__})")
    return parse_document(text, str(path), as_json=path.suffix.lower() == ".json")
