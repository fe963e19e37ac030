"""``OpMapping``: which op each layer should become (what the user asks for).

Precedence, lowest to highest (as ``torch.ao.quantization.QConfigMapping``)::

    default  <  type  <  regex  <  name

* ``default``: the op of every convertible layer not matched below.
* ``types``: class name (``"Linear"``) or dotted path (``"timm.layers.Linear"``) of the
  layer's class or any base class; the nearest class in the MRO wins.
* ``regex``: ``re.fullmatch`` against the module's qualified name; the first matching
  pattern, in insertion order, wins.
* ``names``: exact qualified module names.

``keep_first`` / ``keep_last`` keep the model's first and last layers as they are (full
precision); they override default, type and regex rules, never an exact ``names`` entry.

``preserve`` asks for the function-preserving conversion: every converted layer starts as
the float layer it replaces (blend 1, see :class:`adderize.nn.Blendable`) and is followed
by a BatchNorm (the model's own, else one inserted as the identity), into which the anneal
folds the op's output scale when it ends (:mod:`adderize.train.anneal`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from adderize._config import from_data
from adderize._errors import AdderizeError, AdderizeTypeError
from adderize._yaml import parse_yaml, read_yaml
from adderize.passes.registry import OpConfig

if sys.version_info >= (3, 11):
    import re._parser as _parser  # type: ignore[import-not-found]
else:  # Python 3.10 calls the regex parser sre_parse (deprecated from 3.11 on)
    import sre_parse as _parser

__all__ = ["OpMapping", "check_regex"]

FORMAT_VERSION = 1


MAX_REGEX_LENGTH = 256
MAX_UNBOUNDED = 4  # '.*a.*b.*c.*' backtracks in O(len(name) ** 4) at worst: < 0.5 s here


def check_regex(pattern: Any) -> None:
    """Refuse a layer-name regex that is invalid, too long, or can backtrack
    catastrophically (``(a+)+``, ``(.*)*``, ``(ab|a)*``): a quantified group that holds
    another unbounded quantifier or an alternation, or more than :data:`MAX_UNBOUNDED`
    unbounded quantifiers in all. Python's ``re`` has no time limit, so
    such a pattern could hang conversion and loading on a crafted name list."""
    if not isinstance(pattern, str):
        raise AdderizeTypeError(f"an OpMapping regex is a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise AdderizeError(
            f"regex {pattern[:40]!r}... is {len(pattern)} characters; layer-name regexes "
            f"are limited to {MAX_REGEX_LENGTH}"
        )
    try:
        parsed = _parser.parse(pattern)
    except re.error as e:
        raise AdderizeError(f"invalid regex {pattern!r} in OpMapping: {e}") from None
    if _nested_repeat(parsed, inside=False):
        raise AdderizeError(
            f"regex {pattern!r} nests a repetition inside a repeated group (as in "
            "'(a+)*' or '(ab|a)*'), which can take exponential time to match: write it "
            "without the nesting (e.g. 'layer[0-9.]*conv' instead of '(layer[0-9]+\\.)*conv')"
        )
    if _count_unbounded(parsed) > MAX_UNBOUNDED:
        raise AdderizeError(
            f"regex {pattern!r} has more than {MAX_UNBOUNDED} unbounded repetitions ('*', "
            "'+', '{n,}'); matching time grows as the name length to that power"
        )


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _children(name: str, av: Any) -> list[Any]:
    """The sub-patterns of one parsed regex item."""
    if name in _REPEATS:
        return [av[2]]
    if name == "BRANCH":
        return list(av[1])
    if name == "SUBPATTERN":
        return [av[-1]]
    if name in ("ASSERT", "ASSERT_NOT"):
        return [av[1]]
    if name == "ATOMIC_GROUP":
        return [av]
    return []


def _count_unbounded(items: Any) -> int:
    """Unbounded repeats in parsed regex ``items``, nested ones included."""
    n = 0
    for op, av in items:
        n += str(op) in _REPEATS and av[1] is _parser.MAXREPEAT
        n += sum(_count_unbounded(c) for c in _children(str(op), av))
    return n


def _nested_repeat(items: Any, inside: bool) -> bool:
    """Whether parsed regex ``items`` has a repeat or a branch inside an unbounded repeat."""
    for op, av in items:
        name = str(op)
        here = inside
        if name in _REPEATS:
            many = av[1] is _parser.MAXREPEAT or av[1] > 1
            if inside and many:
                return True
            here = inside or many
        elif name == "BRANCH" and inside:
            return True
        if any(_nested_repeat(c, here) for c in _children(name, av)):
            return True
    return False


#: an OpMapping value: an op name, or an op with per-layer parameters
Op = str | OpConfig


def _normal(value: Any) -> Op:
    """A mapping value checked and stored as its plain name when it has no parameters (so
    ``mapping.default == "adder"``), else as an :class:`OpConfig`."""
    config = OpConfig.of(value)
    return config.op if config.plain else config


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class OpMapping:
    """What the user wants each layer to become. See the module docstring for precedence."""

    default: Op = "adder"
    types: dict[str, Op] = field(default_factory=dict)
    regex: dict[str, Op] = field(default_factory=dict)
    names: dict[str, Op] = field(default_factory=dict)
    keep_first: bool = True
    keep_last: bool = True
    insert_norm: bool = True
    preserve: bool = False

    def __post_init__(self) -> None:
        self.default = _normal(self.default)
        for table in (self.types, self.regex, self.names):
            if not isinstance(table, dict):
                raise AdderizeTypeError(f"expected a mapping of name -> op, got {table!r}")
            for key, op in table.items():
                table[key] = _normal(op)
        for pattern in self.regex:
            check_regex(pattern)
        for flag in ("keep_first", "keep_last", "insert_norm", "preserve"):
            if not isinstance(getattr(self, flag), bool):
                raise AdderizeTypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.preserve and not self.insert_norm:
            raise AdderizeError(
                "preserve=True needs insert_norm=True: the anneal folds each layer's output "
                "scale into the BatchNorm after it, inserted where the model has none"
            )

    # -- chainable setters -------------------------------------------------------------
    def set_default(self, op: Op) -> OpMapping:
        self.default = _normal(op)
        return self

    def set_type(self, type_: type | str, op: Op) -> OpMapping:
        self.types[type_ if isinstance(type_, str) else _qualname(type_)] = _normal(op)
        return self

    def set_regex(self, pattern: str, op: Op) -> OpMapping:
        check_regex(pattern)
        self.regex[pattern] = _normal(op)
        return self

    def set_name(self, name: str, op: Op) -> OpMapping:
        self.names[name] = _normal(op)
        return self

    def with_names(self, names: dict[str, Op]) -> OpMapping:
        """A copy with extra exact-name entries (the original is untouched)."""
        return replace(
            self, names={**self.names, **names}, types=dict(self.types), regex=dict(self.regex)
        )

    # -- resolution ----------------------------------------------------------------------
    def resolve(self, name: str, cls: type) -> tuple[OpConfig, str]:
        """``(op, rule)`` for module ``name`` of class ``cls`` ignoring first/last keeping.

        ``rule`` says which entry decided, e.g. ``"regex 'layer4\\..*'"``.
        """
        if name in self.names:
            return OpConfig.of(self.names[name]), f"name {name!r}"
        for pattern, op in self.regex.items():
            if re.fullmatch(pattern, name):
                return OpConfig.of(op), f"regex {pattern!r}"
        for base in cls.__mro__:
            for key in (_qualname(base), base.__name__):
                if key in self.types:
                    return OpConfig.of(self.types[key]), f"type {key!r}"
        return OpConfig.of(self.default), "default"

    def type_matches(self, key: str, cls: type) -> bool:
        return any(key in (_qualname(b), b.__name__) for b in cls.__mro__)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (op names, or ``{op: NAME, **params}`` for ops with parameters)."""

        def data(op: Op) -> Any:
            return OpConfig.of(op).to_data()

        return {
            "version": FORMAT_VERSION,
            "default": data(self.default),
            **{
                key: {k: data(v) for k, v in getattr(self, key).items()}
                for key in ("types", "regex", "names")
            },
            **{k: getattr(self, k) for k in ("keep_first", "keep_last", "insert_norm", "preserve")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "op mapping") -> OpMapping:
        return from_data(cls, data, source, version=FORMAT_VERSION)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "op mapping") -> OpMapping:
        return cls.from_dict(parse_yaml(text, source) or {}, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> OpMapping:
        return cls.from_dict(read_yaml(path, "op mapping file") or {}, str(path))

    @classmethod
    def coerce(cls, ops: OpMapping | Op | dict[str, Any] | None) -> OpMapping:
        """Accept an OpMapping, an op (the default op: a name or an OpConfig), a dict, or
        None (all adder)."""
        if ops is None:
            return cls()
        if isinstance(ops, OpMapping):
            return ops
        if isinstance(ops, (str, OpConfig)):
            return cls(default=ops)
        if isinstance(ops, dict):
            return cls.from_dict(ops)
        raise AdderizeTypeError(
            f"ops must be an OpMapping, an op name, a dict or None, got {type(ops).__name__}"
        )
