"""Bounded YAML: every YAML file adasearch reads (spec, search space, deployment config, run.yaml)
comes through here.

- Files over MAX_BYTES are refused before they are read.
- Aliases (`*name`) are refused while parsing: a config has no use for them, and a few hundred bytes
  of nested aliases ("billion laughs") expand to gigabytes.
- safe_load's types only (no Python objects).
Errors are one-line UserErrors naming the file, with quoted text capped at 200 characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import yaml

from adasearch.errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB: a spec, a space or a run.yaml is a few kB
QUOTE = 200  # characters of a value or a parser message quoted in an error


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases where the composer meets them, before anything expands."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed", event.start_mark)
        return super().compose_node(parent, index)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= QUOTE else text[:QUOTE] + "..."


def parse_yaml(text: str, where: str):
    """YAML text as Python data, or a one-line UserError naming `where`."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{where}: {len(text):,} characters is too large for a YAML config; at most {MAX_BYTES:,}")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: malformed YAML ({_short(e)})")
    except RecursionError:
        raise UserError(f"{where}: malformed YAML (nested too deeply)")


def read_yaml(path: Union[str, Path], what: str = "YAML file"):
    """A YAML file as Python data: size checked before reading, aliases refused, one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what}")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: {size:,} bytes is too large for a {what}; at most {MAX_BYTES:,}")
        text = path.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: cannot read it as UTF-8 text ({type(e).__name__})")
    return parse_yaml(text, str(path))
