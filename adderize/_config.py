"""The one typed config loader: a dataclass from plain data (YAML / JSON / a dict).

Every config object the project reads (recipes and their sections, op mappings and op
parameters, energy tables, search settings) goes through :func:`from_data`, so they all
check their input the same way:

* the data is a mapping; a key the dataclass lacks is refused, naming the closest valid key
  (``did you mean ...?``) and all of them; a required key that is missing is named;
* nested dataclass fields are read recursively (the error says where: ``recipe: optim: lr``);
* scalars are checked against their annotation (an int where a float is expected is fine);
* a ``version`` key, for classes that declare a format version, must match it (absent:
  the current version);
* the dataclass's own ``__post_init__`` checks run last; their errors carry the source.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar, get_type_hints

from adderize._errors import AdderizeError, AdderizeTypeError

__all__ = ["from_data"]

T = TypeVar("T")

_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}


def from_data(cls: type[T], data: Any, source: str, *, version: int | None = None) -> T:
    """Instantiate dataclass ``cls`` from ``data``; ``source`` names the input in errors
    (a file, "overrides", ...); ``version``: the format version ``cls`` writes."""
    if not isinstance(data, Mapping):
        raise AdderizeTypeError(
            f"{source}: a {cls.__name__} is read from a mapping, got {type(data).__name__}"
        )
    data = dict(data)
    if version is not None:
        found = data.pop("version", version)
        if found != version:
            raise AdderizeError(
                f"{source}: {cls.__name__} version {found!r} is not supported (this adderize "
                f"reads version {version})"
            )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = sorted(fields) + (["version"] if version is not None else [])
            raise AdderizeError(
                f"{source}: unknown key {key!r}{hint}; valid {cls.__name__} keys: "
                f"{', '.join(valid)}"
            )
        kwargs[key] = _value(value, hints[key], f"{source}: {key}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise AdderizeError(f"{source}: missing {cls.__name__} key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if str(e).startswith(source):
            raise
        raise (AdderizeTypeError if isinstance(e, TypeError) else AdderizeError)(
            f"{source}: {e}"
        ) from None


def _value(value: Any, hint: Any, label: str) -> Any:
    """``value`` for a field annotated ``hint``: nested dataclasses built, scalars checked."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_data(hint, {} if value is None else value, label)
    if hint in _SCALARS:
        ok = isinstance(value, hint) or (hint is float and isinstance(value, int))
        if isinstance(value, bool) and hint is not bool:
            ok = False
        if not ok:
            raise AdderizeTypeError(f"{label} must be {_SCALARS[hint]}, got {value!r}")
        return float(value) if hint is float else value
    return value
