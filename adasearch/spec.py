"""RunSpec: the constraint YAML of `adasearch run`, validated up front.

Every error is one line that names the file, the key and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from adasearch import checks, metrics
from adasearch.checks import DTYPE_NAMES, ENGINES, RUNTIMES, SAMPLERS
from adasearch.errors import UserError
from adasearch.metrics import DEFAULT_OBJECTIVES, HARDWARE_METRICS, MAXIMIZE, MEMORY_METRIC
from adasearch.yaml_io import read_yaml

METRICS = metrics.SEARCH_NAMES  # objectives and search constraints: measured on every trial
CERTIFIABLE = metrics.CERTIFIABLE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Bounded(_Strict):
    """Every text bounded: what a spec says is written back into run.yaml, which must stay readable.
    (Metric names need no bound: only the registry's are accepted.)"""

    model_config = ConfigDict(str_max_length=checks.MAX_TEXT)


class DataSpec(_Bounded):
    source: str = "digits"
    limit: Optional[StrictInt] = Field(default=None, ge=1)  # strict: YAML `true` is not 1
    seed: StrictInt = Field(default=0, ge=0, lt=2**31)
    # Fraction of the images kept out of the search, to report on (0: none, figures are in-sample).
    holdout: float = Field(default=0.5, ge=0, le=0.9, allow_inf_nan=False)


class HardwareSpec(_Bounded):
    device: str = "cpu"
    threads: Optional[StrictInt] = Field(default=None, ge=1, le=checks.MAX_THREADS)
    batch_size: StrictInt = Field(default=1, ge=1)
    dtype: Literal[DTYPE_NAMES] = "float32"
    # How every timed forward runs (adasearch/runtimes.py): what the figures belong to, and what serving runs.
    runtime: Literal[RUNTIMES] = "eager"
    # A Ray custom resource that marks the target nodes (e.g. target_cpu): on the ray engine, every trial
    # that times latency or memory runs only on a node that has it. Where to measure, not how: the
    # measuring code (measure.evaluator.Hardware) never takes it.
    ray_resource: Optional[str] = None

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str) -> str:
        """The name's form only: whether this machine has the device is checked when the run starts."""
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v.strip().lower()):
            raise ValueError(f"{v!r} is not known; allowed: auto, cpu, cuda, cuda:N, mps")
        return v

    @field_validator("ray_resource")
    @classmethod
    def _ray_resource_name(cls, v: Optional[str]) -> Optional[str]:
        """A custom resource's name; Ray's own (CPU, GPU, memory, object_store_memory) mark no target."""
        if v is not None and (
            not re.fullmatch(r"[A-Za-z0-9_-]+", v) or v in ("CPU", "GPU", "memory", "object_store_memory")
        ):
            raise ValueError(
                f"{v!r} is not a custom Ray resource name; allowed: letters, digits, _ and - (e.g. target_cpu), "
                f"not CPU, GPU, memory or object_store_memory"
            )
        return v


class Bound(_Strict):
    min: Optional[float] = Field(default=None, allow_inf_nan=False)  # NaN would fail every comparison
    max: Optional[float] = Field(default=None, allow_inf_nan=False)
    # Only for certified constraints (accuracy_drop, disagreement): max holds with this probability.
    confidence: Optional[float] = Field(default=None, gt=0, lt=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_side(self):
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class Objective(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"]

    @field_validator("direction", mode="before")
    @classmethod
    def _direction_shorthand(cls, v):
        if v in ("max", "min"):
            return {"max": "maximize", "min": "minimize"}[v]
        if v not in ("maximize", "minimize"):
            raise ValueError(f"{v!r} is not a direction; allowed: max, min, maximize, minimize")
        return v


class SearchSpec(_Bounded):
    space: str = "demo"
    engine: Literal[ENGINES] = "auto"
    sampler: Literal[SAMPLERS] = "auto"
    trials: StrictInt = Field(default=100, ge=1, le=checks.MAX_TRIALS)
    timeout: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    seed: StrictInt = Field(default=0, ge=0, lt=2**31)  # samplers take 0..2**32-1; workers add their index
    workers: StrictInt = Field(default=1, ge=1)
    storage: Optional[str] = None
    ray_address: Optional[str] = None
    # auto picks exhaustive at or below this size
    exhaustive_limit: int = Field(default=5000, ge=1, le=checks.ENUMERABLE_LIMIT)
    latency_budget_s: float = Field(default=0.05, gt=0, allow_inf_nan=False)  # timing per trial
    # Re-timing of each Pareto candidate. Not less: with 0.5 s (89 rounds for a 0.7 ms call, races of 44) the
    # simulated noisy machine of tests/test_front_simulation.py kept a Jaccard of 0.81, with 0.75 s 0.90, with 1 s
    # 0.96; a demo bench at 0.5 s kept the quiet front whole but missed the busy target (2026-12-07).
    final_latency_budget_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    # Seconds a run may pause its timing, in all, while other processes keep the machine busy (measure/contention.py)
    quiet_wait: float = Field(default=0.0, ge=0, le=checks.MAX_QUIET_WAIT_S, allow_inf_nan=False)


class RunSpec(_Bounded):
    name: Optional[str] = Field(default=None, max_length=checks.MAX_NAME)
    model: str = "demo"
    data: DataSpec = DataSpec()
    hardware: HardwareSpec = HardwareSpec()
    constraints: dict[str, Bound] = {}  # on the search part, for every trial
    certified: dict[str, Bound] = {}  # held-out risks to certify (given under `constraints` in the file)
    objectives: list[Objective] = [Objective(metric=m, direction=metrics.direction(m)) for m in DEFAULT_OBJECTIVES]
    search: SearchSpec = SearchSpec()
    output: Optional[str] = None
    # where the file lives: relative paths in it (space, model, data) are resolved from there
    base_dir: str = Field(default=".", exclude=True)
    spec_file: str = Field(default="", exclude=True)  # for messages: the file the spec came from

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, v):
        return {"source": v} if isinstance(v, str) else v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_shorthand(cls, v):
        """Accept `- accuracy: max` and `- latency_p50_ms` as well as {metric, direction}."""
        if not isinstance(v, list):
            return v
        out = []
        for o in v:
            if isinstance(o, str):
                o = {"metric": o, "direction": "maximize" if o in MAXIMIZE else "minimize"}
            elif isinstance(o, dict) and len(o) == 1 and "metric" not in o:
                ((metric, d),) = o.items()
                if not isinstance(d, str):
                    raise ValueError(
                        f"objectives: {metric}: {d!r} is not a direction; allowed: max, min, maximize, minimize"
                    )
                o = {"metric": metric, "direction": d}  # max/min are mapped by Objective's own validator
            out.append(o)
        return out

    @model_validator(mode="before")
    @classmethod
    def _split_certified(cls, raw):
        """Certified constraints (accuracy_drop, disagreement) are written with the others, but they are
        decided on the held-out part after the search, not per trial."""
        if isinstance(raw, dict) and isinstance(raw.get("constraints"), dict):
            given = raw["constraints"]
            certified = {k: v for k, v in given.items() if k in CERTIFIABLE}
            if certified:
                raw = {**raw, "constraints": {k: v for k, v in given.items() if k not in CERTIFIABLE},
                       "certified": {**raw.get("certified", {}), **certified}}  # fmt: skip
        return raw

    @model_validator(mode="after")
    def _metrics_known(self):
        for key, bound in self.constraints.items():
            if key not in METRICS:
                raise ValueError(
                    f"constraints.{key}: unknown metric; allowed: {', '.join(METRICS + tuple(CERTIFIABLE))}"
                )
            if bound.confidence is not None:
                raise ValueError(
                    f"constraints.{key}.confidence: only a certified constraint has one; allowed on "
                    f"{', '.join(CERTIFIABLE)}"
                )
        for key, bound in self.certified.items():
            if bound.confidence is None or bound.max is None or bound.min is not None:
                raise ValueError(
                    f"constraints.{key}: a certified constraint is {{max: delta, confidence: 1 - epsilon}}"
                )
            if not 0 < bound.max < 1:
                raise ValueError(f"constraints.{key}.max: {bound.max} is not allowed; a fraction in (0, 1)")
            if self.data.holdout == 0:
                raise ValueError(f"constraints.{key}: is decided on the held-out part; set data.holdout above 0")
        if len(self.certified) > 1:
            raise ValueError(
                f"constraints: certify one risk per run ({', '.join(self.certified)} given); certify another "
                f"afterwards with `adasearch certify`"
            )
        if not 2 <= len(self.objectives) <= 3:
            raise ValueError(f"objectives: give 2 or 3 metrics, got {len(self.objectives)}")
        names = [o.metric for o in self.objectives]
        for n in names:
            if n not in METRICS:
                raise ValueError(f"objectives: unknown metric {n!r}; allowed: {', '.join(METRICS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: a metric appears twice in {names}")
        return self

    # ---------------------------------------------------------------- derived

    @property
    def run_name(self) -> str:
        return self.name or "run"

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("results") / self.run_name

    @property
    def needs_latency(self) -> bool:
        return bool(self.used_metrics & HARDWARE_METRICS)

    @property
    def used_metrics(self) -> set:
        """Every metric the objectives and constraints read."""
        return {o.metric for o in self.objectives} | set(self.constraints)

    @property
    def needs_memory(self) -> bool:
        """Peak memory per trial only when the search uses it: it costs a traced forward per config
        (more than timing it on the demo). Pareto candidates always get it when re-timed."""
        return MEMORY_METRIC in self.used_metrics

    def resolve(self, path: str) -> str:
        """A relative path in the spec, taken from the spec file's folder when it exists there."""
        p = Path(path).expanduser()
        if p.is_absolute() or p.exists():
            return str(p)
        candidate = Path(self.base_dir) / p
        return str(candidate) if candidate.exists() else str(p)

    def with_overrides(self, **flags) -> RunSpec:
        """Command-line flags win over the file's keys."""
        search = {k: v for k, v in flags.items() if k in SearchSpec.model_fields and v is not None}
        top = {k: v for k, v in flags.items() if k in ("output",) and v is not None}
        data = self.model_dump()
        data["search"].update(search)
        data.update(top)
        data["base_dir"], data["spec_file"] = self.base_dir, self.spec_file
        try:
            return RunSpec(**data)
        except ValidationError as e:
            err = e.errors()[0]
            flag = "--" + str(err["loc"][-1]).replace("_", "-")
            raise UserError(f"{flag}: {_describe(err)}")

    def to_yaml_dict(self) -> dict:
        return self.model_dump(mode="json")


def _public_keys(model) -> list:
    return [k for k in model.model_fields if k not in ("base_dir", "spec_file")]


def _section(loc: tuple):
    """The schema that an unknown key at `loc` was found in, to list what is allowed there."""
    if len(loc) == 1:
        return RunSpec
    return {
        "data": DataSpec,
        "hardware": HardwareSpec,
        "search": SearchSpec,
        "constraints": Bound,
        "objectives": Objective,
    }.get(loc[0], RunSpec)


def _describe(err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}; allowed here: {', '.join(_public_keys(_section(err['loc'])))}"
    if err["type"] == "literal_error":
        return f"{loc}: {err['input']!r} is not allowed; {err['msg'].replace('Input should be', 'allowed:')}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def load_spec(path: Union[str, Path]) -> RunSpec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such run spec file")
    raw = read_yaml(path, "run spec file")
    if raw is None:
        raise UserError(
            f"{path}: the run spec is empty; give at least `model`, `objectives` and `search` "
            f"(see examples/demo-cpu.yaml)"
        )
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a run spec is a mapping of keys ({', '.join(_public_keys(RunSpec))})")
    if "base_dir" in raw or "spec_file" in raw:
        raise UserError(f"{path}: unknown key 'base_dir'; allowed here: {', '.join(_public_keys(RunSpec))}")
    raw.setdefault("name", path.stem)
    try:
        return RunSpec(**raw, base_dir=str(path.parent), spec_file=str(path))
    except ValidationError as e:
        raise UserError(f"{path}: {_describe(e.errors()[0])}")
    except TypeError as e:  # a key that is not a Python identifier, e.g. `1: x`
        raise UserError(f"{path}: keys of a run spec are names ({', '.join(_public_keys(RunSpec))}); {e}")
