"""Terminal rendering of one Measurement."""

from __future__ import annotations


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def print_measurement(config, m, data_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{config.label()} on {data_name} ({m.samples} samples)", show_header=False)
    env = m.env
    rows = [
        ("top-1 / top-5", f"{m.accuracy:.4f} / {m.top5:.4f}"),
        ("MACs per image", f"{m.macs:,.0f}  ({m.gmacs:.4f} G)"),
        ("FLOPs per image", f"{m.flops:,.0f}  (= 2 x MACs)"),
        (
            "mean exit depth",
            f"{m.mean_exit_depth:.2f}  (fractions per depth: " + ", ".join(f"{f:.2f}" for f in m.exit_fractions) + ")",
        ),
        (
            "latency p50 / p90 / p99",
            f"{_fmt(m.latency_p50_ms)} / {_fmt(m.latency_p90_ms)} / {_fmt(m.latency_p99_ms)} ms "
            f"per batch of {env.get('batch_size')}",
        ),
        ("samples per second", f"{_fmt(m.throughput, ',.1f')} samples/s"),
        ("peak memory", f"{_fmt(m.memory_mb, ',.2f')} MB  ({m.memory_method})"),
        (
            "environment",
            f"{env.get('device_name', env.get('device'))}, torch {env.get('torch')}, "
            f"{env.get('threads')} threads, {env.get('dtype')}, {env.get('latency_reps')} timed reps",
        ),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
    Console().print(f"[dim]{m.macs_convention}[/dim]")
