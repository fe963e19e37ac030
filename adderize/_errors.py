"""The project's exception types, and one line about an exception for messages that wrap
errors from other libraries."""

from __future__ import annotations

__all__ = ["AdderizeError", "AdderizeTypeError", "brief"]


class AdderizeError(ValueError):
    """Something the user gave is wrong (a value, option, file or model): the message names
    it and, where there are some, the valid choices. The command line reports these as
    usage errors (exit 2, no traceback); anything else is a bug and keeps its traceback.
    A ``ValueError``, so ``except ValueError`` still catches it."""


class AdderizeTypeError(AdderizeError, TypeError):
    """A user-given value of the wrong type (e.g. a list where a config wants a mapping)."""


def brief(e: BaseException, lines: int = 1, limit: int = 200) -> str:
    """The first ``lines`` non-empty lines of ``e``'s message, joined and cut at ``limit``
    characters ("" when the message is empty)."""
    text = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return " ".join(text[:lines])[:limit]
