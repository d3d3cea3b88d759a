"""The package's shape: no import cycle, one metric registry, a CLI that answers without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from adasearch import metrics
from adasearch.measure.evaluator import Measurement

PACKAGE = Path(__file__).resolve().parents[1] / "adasearch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """module -> adasearch modules it imports (at any depth in the file: lazy imports count too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from adasearch.search import trials` imports a module; `from adasearch.x import f` a name
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                # a package's __init__ is not a dependency of its own submodules' imports of siblings
                if t and t != name and t != "adasearch":
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict):
    """A list of modules forming a cycle, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(n):
        colour[n] = "grey"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == "grey":
                return stack[stack.index(m) :] + [m]
            if m not in colour:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = "black"
        return None

    for n in sorted(graph):
        if n not in colour:
            found = visit(n)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "adasearch.search.context" in graph["adasearch.search.engines.optuna"]  # the parser sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# search/'s layers, top first (search/__init__.py says what each holds): a module imports only from its own
# layer or the ones above it, so a run's data flows down and never back (a lazy import counts too).
SEARCH_LAYERS = [
    ["space", "trials", "storage", "phases"],
    ["context"],
    ["front", "front.pareto", "front.beyond_noise", "front.finalists", "front.heldout"],
    ["latency_profile"],
    ["engines", "engines.base", "engines.exhaustive", "engines.optuna", "engines.model", "engines.ray",
     "engines.ray_accuracy"],
    ["progress", "results", "runner"],
]  # fmt: skip


def layer_violations(graph: dict, layers: list, prefix: str) -> list:
    """(module, what it imports from a lower layer) for every import against the order of `layers`."""
    level = {f"{prefix}.{m}": i for i, names in enumerate(layers) for m in names}
    return sorted(
        (module, dep)
        for module, deps in graph.items()
        if module in level
        for dep in deps
        if dep in level and level[dep] > level[module]
    )


def test_search_is_layered_and_every_module_is_in_a_layer():
    graph = import_graph()
    search = {m for m in graph if m.startswith("adasearch.search.")}
    named = {f"adasearch.search.{m}" for names in SEARCH_LAYERS for m in names}
    assert search == named, f"not in a layer: {sorted(search - named)}; gone: {sorted(named - search)}"
    assert layer_violations(graph, SEARCH_LAYERS, "adasearch.search") == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"p.low": {"p.high"}, "p.high": {"p.low"}, "p.other": {"p.high"}}
    assert layer_violations(graph, [["high"], ["low"]], "p") == [("p.high", "p.low")]


def metric_literals() -> list:
    """(file, line, name) of every string literal that equals a metric name, outside metrics.py."""
    names = set(metrics.NAMES) | {metrics.MMACS}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append((path.name, node.lineno, node.value))
    return found


def test_every_metric_name_is_declared_once_in_the_registry():
    assert metric_literals() == []


def test_the_registry_drives_the_spec_and_the_measurement():
    from adasearch.spec import METRICS, RunSpec

    assert METRICS == metrics.SEARCH_NAMES
    m = Measurement(accuracy=0.5, top5=0.9, macs=2e6, flops=4e6, mean_exit_depth=1.0, exit_fractions=[1.0])
    assert list(m.metrics()) == list(metrics.SEARCH_NAMES)
    assert m.metrics()["gmacs"] == pytest.approx(2e-3)
    spec = RunSpec(objectives=["accuracy", "throughput", "gmacs"])  # shorthand directions from the registry
    assert [o.direction for o in spec.objectives] == ["maximize", "maximize", "minimize"]
    # memory is its own kind: measured on the target, but not a noisy timing that re-timing rescues
    assert "memory_mb" in metrics.HARDWARE_METRICS and "memory_mb" not in metrics.TIMED_METRICS
    assert RunSpec(constraints={"memory_mb": {"max": 1}}).needs_latency


def test_memory_violations_are_not_near_misses_of_timing():
    from adasearch.config import DeploymentConfig
    from adasearch.search.front.finalists import near_misses
    from adasearch.search.trials import TrialRecord
    from adasearch.spec import RunSpec

    spec = RunSpec(
        objectives=["accuracy", "latency_p50_ms"],
        constraints={"memory_mb": {"max": 1.0}, "latency_p90_ms": {"max": 1.0}},
    )
    metrics_ = {"accuracy": 0.9, "latency_p50_ms": 1.0, "latency_p90_ms": 1.1, "memory_mb": 2.0}
    over_memory = TrialRecord(0, DeploymentConfig(depth=1), {}, metrics_, False, {"memory_mb": 1.0})
    over_time = TrialRecord(1, DeploymentConfig(depth=2), {}, metrics_, False, {"latency_p90_ms": 0.1})
    assert near_misses([over_memory, over_time], spec, chosen=[], limit=5) == [over_time]


@pytest.mark.parametrize(
    "command", [[], ["run"], ["report"], ["export"], ["serve"], ["inspect"], ["measure"], ["train-demo"]]
)
def test_help_imports_no_torch(command):
    """--help answers at once: the heavy modules load inside the commands that need them."""
    code = (
        "import sys\nfrom adasearch.cli import main\n"
        f"try:\n    main({command + ['--help']!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'optuna', 'ray', 'fastapi', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and "HEAVY []" in out.stdout, out.stdout[-500:]
