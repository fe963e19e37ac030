"""One cache of what the kernels derive from a weight (re-layouts, resolved calls), with one
key rule: an entry is found by the weight's identity and a tag, and is valid while that
weight is alive and the entry's key (which holds the weight's storage and version counter,
and whatever else the value depends on) is the one it was made for. A weight that dies
drops its entries (a weak reference); :func:`clear` drops them all."""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any

import torch

__all__ = ["clear", "get", "peek", "put", "size", "weight_state"]

_CACHE: dict[tuple[int, Hashable], tuple[Any, Hashable, Any]] = {}


def weight_state(weight: torch.Tensor) -> tuple[int, int]:
    """The weight's storage and version counter: part of every key (in-place edits under
    ``torch.no_grad()``, ``load_state_dict``, optimizer steps and a new ``.data`` tensor
    change it; in-place edits through ``.data`` bypass the counter and are not seen)."""
    return weight.data_ptr(), weight._version


def get(weight: torch.Tensor, tag: Hashable, key: Hashable) -> Any | None:
    """The value kept for ``(weight, tag)`` if it was made for ``key``, else None."""
    hit = _CACHE.get((id(weight), tag))
    if hit is not None and hit[0]() is weight and hit[1] == key:
        return hit[2]
    return None


def put(weight: torch.Tensor, tag: Hashable, key: Hashable, value: Any) -> Any:
    """Keep ``value`` for ``(weight, tag)``, made for ``key``; returns it."""
    ident = (id(weight), tag)
    gone = weakref.ref(weight, lambda _: _CACHE.pop(ident, None))
    _CACHE[ident] = (gone, key, value)
    return value


def peek(weight: torch.Tensor, tag: Hashable) -> Any | None:
    """The value kept for ``(weight, tag)`` whatever key it was made for (tests)."""
    hit = _CACHE.get((id(weight), tag))
    return hit[2] if hit is not None and hit[0]() is weight else None


def clear() -> None:
    """Forget every kept value (tests and memory-bound callers)."""
    _CACHE.clear()


def size(tag: Hashable | None = None) -> int:
    """Entries kept (with ``tag`` only, if given)."""
    return sum(1 for _, t in _CACHE if tag is None or t == tag)
