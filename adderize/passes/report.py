"""``RewriteReport``: every layer the pass replaced, kept, skipped or inserted, and why."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["LayerRecord", "RewriteReport"]

Action = Literal["replaced", "kept", "skipped", "inserted"]


@dataclass(frozen=True)
class LayerRecord:
    """One row of the report.

    ``requested`` is the op the mapping asked for; a ``skipped`` row whose ``requested`` op
    is not ``"conv"`` is a conversion that did not happen (``strict=True`` raises on it).
    """

    name: str
    original: str
    action: Action
    new: str
    reason: str
    requested: str = ""


@dataclass
class RewriteReport:
    """Result of :func:`adderize.adderize`: one :class:`LayerRecord` per layer."""

    records: list[LayerRecord] = field(default_factory=list)
    tracing: str = "fx"
    note: str = ""
    result_type: str = ""
    #: ``ops="auto"``: the per-layer choice (:class:`adderize.train.auto.AutoChoice`)
    auto: Any = None

    def by_action(self, action: Action) -> list[LayerRecord]:
        return [r for r in self.records if r.action == action]

    @property
    def replaced(self) -> list[LayerRecord]:
        return self.by_action("replaced")

    @property
    def kept(self) -> list[LayerRecord]:
        return self.by_action("kept")

    @property
    def skipped(self) -> list[LayerRecord]:
        return self.by_action("skipped")

    @property
    def inserted(self) -> list[LayerRecord]:
        return self.by_action("inserted")

    @property
    def unmet(self) -> list[LayerRecord]:
        """Skipped layers that the mapping asked to convert."""
        return [r for r in self.skipped if r.requested not in ("", "conv")]

    def summary(self) -> str:
        ops = Counter(r.new for r in self.replaced)
        made = ", ".join(f"{n} {t}" for t, n in sorted(ops.items())) or "nothing"
        parts = [
            f"replaced {len(self.replaced)} layer(s) ({made})",
            f"kept {len(self.kept)}",
            f"skipped {len(self.skipped)}",
            f"inserted {len(self.inserted)} norm layer(s)",
        ]
        head = f"adderize: {'; '.join(parts)}. tracing: {self.tracing}"
        if self.note:
            head += f" ({self.note})"
        if self.result_type:
            head += f". result: {self.result_type}"
        return head

    def table(self) -> str:
        header = ("module", "original", "action", "new", "reason")
        rows = [(r.name, r.original, r.action, r.new, r.reason) for r in self.records]
        widths = [min(max(len(str(row[i])) for row in [header, *rows]), 48) for i in range(4)]

        def fmt(row: tuple[str, ...]) -> str:
            cells = [str(c)[: widths[i]].ljust(widths[i]) for i, c in enumerate(row[:4])]
            return "  ".join([*cells, row[4]]).rstrip()

        rule = "  ".join("-" * w for w in widths) + "  ------"
        return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])

    def __str__(self) -> str:
        auto = f"\n\n{self.auto.table()}" if self.auto is not None else ""
        return f"{self.table()}\n\n{self.summary()}{auto}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracing": self.tracing,
            "note": self.note,
            "result_type": self.result_type,
            "summary": self.summary(),
            "records": [asdict(r) for r in self.records],
            **({"auto": asdict(self.auto)} if self.auto is not None else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
