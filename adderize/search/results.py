"""What a search leaves: the trials CSV, the Pareto front and its plot, ``best_ops.yaml``
and ``summary.json``."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from adderize._errors import AdderizeError
from adderize.search.space import OpSpace

__all__ = ["choice_key", "finish", "pareto_front", "plot_front"]

log = logging.getLogger(__name__)


def choice_key(row: dict[str, Any]) -> tuple[float, float]:
    """The search's choice among trained rows is the largest key: the most accurate, then
    the least energy (``best_ops.yaml``; the one-shot search's ``best_model.safetensors``)."""
    return row["accuracy"], -row["energy_pj"]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trained rows no other trained row beats on both energy (lower) and accuracy."""
    done = sorted((r for r in rows if r["trained"]), key=lambda r: (r["energy_pj"], -r["accuracy"]))
    front, best = [], -1.0
    for r in done:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def plot_front(
    rows: list[dict[str, Any]], front: list[dict[str, Any]], space: OpSpace, path: Path
) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    done = [r for r in rows if r["trained"]]
    ax.scatter(
        [r["energy_ratio"] for r in done],
        [r["accuracy"] for r in done],
        c="tab:gray",
        alpha=0.6,
        label="trained candidates",
    )
    ax.plot(
        [r["energy_ratio"] for r in front],
        [r["accuracy"] for r in front],
        "o-",
        c="tab:red",
        label="Pareto front",
    )
    ax.axvline(space.budget_pj / space.conv_pj, ls="--", c="k", alpha=0.5, label="budget")
    ax.set(xlabel="energy / all-conv energy", ylabel="validation top-1", title="energy vs accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finish(out: Path, rows: list[dict[str, Any]], space: OpSpace) -> dict[str, Any]:
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["trial", "energy_pj", "energy_ratio", "feasible", "trained", "accuracy", *space.layers]
        )
        for r in rows:
            w.writerow(
                [
                    r["trial"],
                    r["energy_pj"],
                    r["energy_ratio"],
                    r["feasible"],
                    r["trained"],
                    r["accuracy"],
                    *(r["assignment"][n] for n in space.layers),
                ]
            )
    front = pareto_front(rows)
    feasible = [r for r in rows if r["trained"]]
    if not feasible:
        raise AdderizeError("no candidate was within budget: raise --budget")
    best = max(feasible, key=choice_key)
    space.mapping(best["assignment"]).save(out / "best_ops.yaml")
    plot_front(rows, front, space, out / "pareto.png")
    summary = {
        "trials": len(rows),
        "trained": len(feasible),
        "over_budget_not_trained": sum(not r["feasible"] for r in rows),
        "budget_ratio": space.budget_pj / space.conv_pj,
        "best": best,
        "front": [
            {k: r[k] for k in ("energy_ratio", "accuracy", "trial", "assignment")} for r in front
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"\n{len(rows)} trials, {len(feasible)} trained; Pareto front (energy/all-conv, acc):"]
    for r in front:
        ops = {op: sum(v == op for v in r["assignment"].values()) for op in space.ops}
        lines.append(f"  {r['energy_ratio']:.3f}  {r['accuracy']:.4f}  {r['trial']}  {ops}")
    log.info("%s", "\n".join(lines))
    log.info(
        f"chosen (best accuracy within budget): {best['trial']} energy "
        f"{best['energy_ratio']:.3f}x acc {best['accuracy']:.4f} -> {out / 'best_ops.yaml'}"
    )
    return summary
