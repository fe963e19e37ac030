"""Reading the project's YAML files (recipes, op mappings, cost tables) safely.

Only standard YAML is read (``yaml.safe_load``: no ``!!python/...`` tags, nothing
constructed but plain data). Every error names the file, line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from adderize._errors import AdderizeError

__all__ = ["parse_yaml", "read_yaml"]


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``; ValueError ``source:line:column: problem`` on bad input."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(p for p in (e.context, e.problem) if p) or str(e)
        if "constructor for the tag" in problem:
            problem += " (only standard YAML tags are read)"
        raise AdderizeError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise AdderizeError(f"{source}: not valid YAML: {e}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path`` (a ``what``: "recipe", "op mapping", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AdderizeError(
            f"{path}: a {what} is UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    return parse_yaml(text, str(path))
