"""Print a markdown table and save it under bench/results/ with the environment it ran in."""

from __future__ import annotations

import datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def save_table(name: str, title: str, header: list, rows: list, notes: list = ()) -> str:
    from adasearch.measure.environment import environment

    env = environment("cpu", None)
    lines = [
        f"# {title}",
        "",
        f"{datetime.date.today()} on {env['device_name']}, torch {env['torch']}, {env['threads']} threads",
        "",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return text
