"""One line about an exception, for messages that wrap errors from other libraries."""

from __future__ import annotations

__all__ = ["brief"]


def brief(e: BaseException, lines: int = 1, limit: int = 200) -> str:
    """The first ``lines`` non-empty lines of ``e``'s message, joined and cut at ``limit``
    characters ("" when the message is empty)."""
    text = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return " ".join(text[:lines])[:limit]
