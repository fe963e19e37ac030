"""Plot of an :class:`~adderize.energy.report.EnergyReport` (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adderize.energy.report import EnergyReport

__all__ = ["plot_report"]

_SEGMENTS = (  # (label, colour)
    ("mult", "#d62728"),
    ("add", "#1f77b4"),
    ("shift", "#2ca02c"),
    ("xnor", "#9467bd"),
    ("popcount", "#8c564b"),
    ("memory", "#bbbbbb"),
)


def plot_report(report: EnergyReport, path: Path) -> Path:
    """Per conv/linear layer: all-conv (left bar) vs converted (right bar), stacked by op
    type and memory; right panel: whole-model totals including every other node."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    layers = [x for x in report.layers if x.kind in ("conv2d", "linear")]
    fig = Figure(figsize=(max(8.0, 0.28 * len(layers) + 4), 4.8))
    ax, tot = fig.subplots(
        1,
        2,
        gridspec_kw={"width_ratios": [max(len(layers), 4), 3]},
    )
    width = 0.4
    xs = range(len(layers))

    def stack(axis, positions, parts_per_bar, w):
        bottom = [0.0] * len(parts_per_bar)
        for label, colour in _SEGMENTS:
            heights = [p.get(label, 0.0) / 1e6 for p in parts_per_bar]
            if not any(heights):
                continue
            axis.bar(positions, heights, w, bottom=bottom, color=colour, label=label)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]

    base = [{**x.baseline_compute_by_op, "memory": x.baseline_memory_pj} for x in layers]
    conv = [{**x.compute_by_op, "memory": x.memory_pj} for x in layers]
    stack(ax, [i - width / 2 for i in xs], base, width)
    stack(ax, [i + width / 2 for i in xs], conv, width)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{x.name} ({x.op})" for x in layers], rotation=90, fontsize=6)
    ax.set_ylabel("energy per inference (uJ)")
    ax.set_title("conv/linear layers: left bar all-conv, right bar as converted")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)

    def totals(use_baseline: bool) -> dict[str, float]:
        out: dict[str, float] = {}
        for x in report.layers:
            parts = x.baseline_compute_by_op if use_baseline else x.compute_by_op
            for k, v in parts.items():
                out[k] = out.get(k, 0.0) + v
            mem = x.baseline_memory_pj if use_baseline else x.memory_pj
            out["memory"] = out.get("memory", 0.0) + mem
        return out

    stack(tot, [0, 1], [totals(True), totals(False)], 0.6)
    tot.set_xticks([0, 1])
    tot.set_xticklabels(["all-conv", "converted"], fontsize=8)
    ratio = report.total_pj / max(report.baseline_total_pj, 1e-30)
    tot.set_title(f"whole model\ntotal x{ratio:.2f}", fontsize=9)
    fig.suptitle(f"energy, table {report.table}, input {report.input_size}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
