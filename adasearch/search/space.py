"""SearchSpace: the domain of each knob and its granularity, read from search_spaces/*.yaml.

    knobs:
      num_tokens: [32, 64, 128, 256]                 # a list: one global choice
      depth: {range: [1, 21]}                        # inclusive integer range
      mat_dim: {values: [416, 624, 832], granularity: per_stage, stages: 3}
      depth_tau: {values: [null, 0.9, 0.99], granularity: per_layer}

A per_stage knob takes one value per stage of contiguous blocks (sizes as equal as possible); a
per_layer knob one value per block. A per-stage/per-layer token schedule is made non-increasing by
taking the running minimum, since tokens can be dropped but not added.

Each choice is one flat parameter (`mat_dim`, `mat_dim.s1`, `depth_tau.l7`), which is what Optuna
samples and what trials.csv shows. `canonical()` maps configs that must give identical outputs to
one representative, so no budget is spent twice on one network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from adasearch.checks import is_int
from adasearch.config import KNOBS, DeploymentConfig
from adasearch.errors import KnobError, UserError
from adasearch.model.adaperceiver import AdaPerceiverConfig, make_plan
from adasearch.yaml_io import read_yaml

GRANULARITIES = ("global", "per_stage", "per_layer")
# Inside the package, so a regular (non-editable) install has them too; the checkout's top-level
# search_spaces/ is a link to this folder.
STRUCTURAL = ("mat_dim", "token_grans")  # the knobs one anytime pass is specific to
SETTINGS_LIMIT = 10_000  # combinations pass_settings enumerates
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple
    granularity: str = "global"
    stages: int = 1

    def params(self, L: int) -> list:
        if self.granularity == "global":
            return [self.name]
        if self.granularity == "per_stage":
            return [f"{self.name}.s{i}" for i in range(self.stages)]
        return [f"{self.name}.l{i}" for i in range(L)]


def stage_sizes(L: int, k: int) -> list:
    return [L // k + (1 if i < L % k else 0) for i in range(k)]


def _encode(v):
    """Optuna categorical choices must be scalars: granularity lists travel as '2,4,8'."""
    return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v


def _decode(name: str, v):
    if name == "token_grans" and isinstance(v, str):
        return tuple(int(x) for x in v.split(","))
    return v


class SearchSpace:
    def __init__(self, knobs: dict, model_cfg: AdaPerceiverConfig, name: str = "space", source: str = "<memory>"):
        self.knobs = knobs
        self.cfg = model_cfg
        self.L = model_cfg.depth
        self.name, self.source = name, source

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, ref: Union[str, Path], model_cfg: AdaPerceiverConfig, base_dir: Optional[Path] = None) -> SearchSpace:
        path = find_space(ref, base_dir)
        raw = read_yaml(path, "search space file")
        if not isinstance(raw, dict) or not isinstance(raw.get("knobs"), dict) or not raw["knobs"]:
            raise UserError(f"{path}: a search space needs a 'knobs' mapping of {list(KNOBS)}")
        unknown = [k for k in raw if k not in ("name", "description", "knobs")]
        if unknown:
            raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed: name, description, knobs")
        knobs = {name: _parse_knob(path, name, spec, model_cfg) for name, spec in raw["knobs"].items()}
        return cls(knobs, model_cfg, raw.get("name", path.stem), str(path))

    # ---------------------------------------------------------------- size and enumeration

    def parameters(self) -> list:
        """[(param name, choices)] in a fixed order."""
        return [(p, knob.values) for knob in self.knobs.values() for p in knob.params(self.L)]

    def size(self) -> int:
        return math.prod(len(v) for _, v in self.parameters())

    def enumerate(self) -> Iterator[tuple]:
        """Every (params, config) of the space, in a fixed order."""
        names = [p for p, _ in self.parameters()]
        for combo in itertools.product(*(v for _, v in self.parameters())):
            params = dict(zip(names, combo))
            yield params, self.config_from_params(params)

    def unique(self) -> dict:
        """{canonical config: params of its first occurrence}: every distinct network of the space."""
        out: dict = {}
        for params, config in self.enumerate():
            out.setdefault(self.canonical(config), params)
        return out

    def width_settings(self) -> list:
        """One config per (mat_dim, token_grans) combination of the space, every other knob at its first
        value: what the shared accuracy passes depend on (accuracy.structural_key), without enumerating
        the whole space."""
        return self.settings(STRUCTURAL)

    def pass_settings(self) -> Optional[list]:
        """One config per (mat_dim, token_grans, num_tokens) combination: enough to tell whether every
        config can share an anytime pass, and to find a config that can for each width setting; None
        when there are more than SETTINGS_LIMIT combinations."""
        return self.settings((*STRUCTURAL, "num_tokens"), limit=SETTINGS_LIMIT)

    def settings(self, knobs: tuple, limit: Optional[int] = None) -> Optional[list]:
        """One config per combination of the values of `knobs`, every other knob at its first value;
        None when there are more than `limit` combinations."""
        varied = [(p, v if p.split(".")[0] in knobs else v[:1]) for p, v in self.parameters()]
        if limit is not None and math.prod(len(v) for _, v in varied) > limit:
            return None
        names = [p for p, _ in varied]
        return [
            self.config_from_params(dict(zip(names, combo))) for combo in itertools.product(*(v for _, v in varied))
        ]

    def suggest(self, trial) -> DeploymentConfig:
        params = {
            p: _decode(p.split(".")[0], trial.suggest_categorical(p, [_encode(v) for v in values]))
            for p, values in self.parameters()
        }
        return self.config_from_params(params)

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {p: CategoricalDistribution([_encode(v) for v in values]) for p, values in self.parameters()}

    def encode_params(self, params: dict) -> dict:
        return {p: _encode(v) for p, v in params.items()}

    def config_from_params(self, params: dict) -> DeploymentConfig:
        values = {}
        for name, knob in self.knobs.items():
            if knob.granularity == "global":
                values[name] = _decode(name, params[name])
                continue
            per = [_decode(name, params[p]) for p in knob.params(self.L)]
            if knob.granularity == "per_stage":
                per = [v for v, n in zip(per, stage_sizes(self.L, knob.stages)) for _ in range(n)]
            if name == "num_tokens":
                per = list(itertools.accumulate(per, min))  # tokens can be dropped, not added
            if name == "token_grans":
                # per layer, null means "the checkpoint's granularities" (a per-layer list cannot mix
                # None with lists, and the model reads a list of lists as one list per layer)
                per = [self.cfg.mask_token_grans if v is None else v for v in per]
                if all(v is None for v in per):
                    values[name] = None
                    continue
                per = [tuple(v) for v in per]
            values[name] = tuple(per)
        return DeploymentConfig(**values)

    # ---------------------------------------------------------------- canonical form

    def canonical(self, config: DeploymentConfig) -> DeploymentConfig:
        return canonical(config, self.cfg)


def canonical(config: DeploymentConfig, cfg: AdaPerceiverConfig) -> DeploymentConfig:
    """One representative for every config that runs the same network on every input.

    - knobs of blocks that never run (beyond depth) are dropped;
    - a threshold after the last block never fires (no check runs there), so it is no exit;
    - a threshold of 0 always fires at its first check, so it is the same as stopping there;
    - a token schedule with no exit check before the last block, ending on a count that is a block
      boundary of every executed layer, equals that constant count (the prefix property);
    - uniform per-layer values become the scalar; defaults (full width, all blocks, max tokens,
      the checkpoint's granularities) become None.
    """
    L = cfg.depth
    plan = make_plan(cfg, **config.to_dict())
    d = plan.depth
    taus = list(plan.taus[: d - 1])
    if 0.0 in taus:  # the first check with tau 0 stops everyone: the same as depth = that block
        d = taus.index(0.0) + 1
        taus = taus[: d - 1]
    kw = config.to_dict()
    tokens = list(plan.tokens[:d])
    hidden_full = cfg.ffn_hidden

    # thresholds
    if all(t is None for t in taus):
        depth_tau = None
    elif len(set(taus)) == 1:
        depth_tau = taus[0]
    else:
        depth_tau = tuple(taus + [None] * (L - len(taus)))

    # tokens
    checks = [i for i, t in enumerate(taus) if t is not None]
    read_at = set(checks) | {d - 1}
    last = tokens[-1]
    common = set.intersection(*(set(g) for g in plan.grans[:d])) if cfg.masked else {tokens[0]}
    if len({tokens[i] for i in read_at}) == 1 and last in common or len(set(tokens)) == 1:
        num_tokens = None if last == cfg.max_latent_tokens else last
    else:
        num_tokens = tuple(tokens + [last] * (L - d))

    # widths: compare the executed hidden sizes
    widths = kw["mat_dim"] if isinstance(kw["mat_dim"], list) else [kw["mat_dim"]] * L
    hidden = plan.hidden[:d]
    if len(set(hidden)) == 1:
        mat_dim = None if hidden[0] == hidden_full else widths[0]
    else:
        mat_dim = tuple((None if h == hidden_full else w) for w, h in zip(widths[:d], hidden)) + (None,) * (L - d)

    # granularities
    grans = kw["token_grans"]
    if grans is not None and all(isinstance(g, (list, tuple)) for g in grans):
        executed = [tuple(g) for g in grans[:d]]
        grans = executed[0] if len(set(executed)) == 1 else tuple(executed + [executed[-1]] * (L - d))
    if (
        grans is not None
        and not isinstance(grans[0], (list, tuple))
        and list(grans) == list(cfg.mask_token_grans or [])
    ):
        grans = None
    return DeploymentConfig(
        num_tokens=num_tokens, token_grans=grans, mat_dim=mat_dim, depth=None if d == L else d, depth_tau=depth_tau
    )


# ---------------------------------------------------------------- file handling


def find_space(ref: Union[str, Path], base_dir: Optional[Path] = None) -> Path:
    """A path, or a name of a ready space in search_spaces/ (`demo`, `in1k`, `in1k-stages`)."""
    ref = str(ref)
    candidates = [Path(ref)]
    if base_dir is not None:
        candidates.append(Path(base_dir) / ref)
    candidates += [SPACES_DIR / ref, SPACES_DIR / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    ready = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    raise UserError(f"search space {ref!r}: no such file (ready spaces: {', '.join(ready)}; or give a path)")


def _parse_knob(path: Path, name: str, spec, cfg: AdaPerceiverConfig) -> Knob:
    where = f"{path}: knobs.{name}"
    if name not in KNOBS:
        raise UserError(f"{path}: unknown knob {name!r}; allowed: {', '.join(KNOBS)}")
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where}: give a list of values or a mapping with values/range, granularity, stages")
    extra = [k for k in spec if k not in ("values", "range", "granularity", "stages")]
    if extra:
        raise UserError(f"{where}: unknown key {extra[0]!r}; allowed: values, range, granularity, stages")
    if "range" in spec:
        r = spec["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and r[0] <= r[1]):
            raise UserError(f"{where}.range: give [first, last] integers, first <= last")
        values = list(range(r[0], r[1] + 1))
    else:
        values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: needs a non-empty list of values")
    gran = spec.get("granularity", "global")
    if gran not in GRANULARITIES:
        raise UserError(f"{where}.granularity: {gran!r} is not allowed; allowed: {', '.join(GRANULARITIES)}")
    if name == "depth" and gran != "global":
        raise UserError(f"{where}.granularity: depth is a single number; only 'global' is allowed")
    stages = spec.get("stages", 1)
    if gran == "per_stage" and not (isinstance(stages, int) and 1 <= stages <= cfg.depth):
        raise UserError(f"{where}.stages: {stages!r} is not allowed; an integer 1..{cfg.depth} (the model's depth)")
    for v in values:
        _check_value(where, name, v, cfg)
    frozen = tuple(tuple(v) if isinstance(v, list) else v for v in values)
    return Knob(name, frozen, gran, stages if gran == "per_stage" else 1)


def _check_value(where: str, name: str, v, cfg: AdaPerceiverConfig):
    """One knob value against the model: the model's own check (make_plan, which names the knob and
    what is allowed), after the space's tighter token range (a space searches trained counts only)."""
    if name == "num_tokens" and not (is_int(v) and 1 <= v <= cfg.max_latent_tokens):
        raise UserError(
            f"{where}: value {v!r} does not fit the model; allowed: integers 1..{cfg.max_latent_tokens} "
            f"(max_latent_tokens; trained: {cfg.mask_token_grans})"
        )
    if name == "depth" and not (is_int(v) and 1 <= v <= cfg.depth):
        raise UserError(f"{where}: value {v!r} does not fit the model; allowed: integers 1..{cfg.depth}")
    try:
        make_plan(cfg, **{name: v})
    except KnobError as e:
        raise UserError(f"{where}: value {v!r} does not fit the model; {e}")
