"""Training curves of a fine-tuning run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(
    history: list[dict[str, Any]], path: str | Path, teacher_acc: float | None = None
) -> Path:
    """Validation accuracy and training loss per epoch: conv teacher vs adder student."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    styles = {"teacher": ("conv teacher", "tab:blue"), "student": ("adder student", "tab:red")}
    for phase, (label, color) in styles.items():
        rows = [r for r in history if r["phase"] == phase]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], "o-", color=color, label=label)
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", color=color, label=label)
    if teacher_acc is not None:
        acc_ax.axhline(teacher_acc, ls="--", color="tab:blue", alpha=0.5, label="teacher final")
    acc_ax.set(xlabel="epoch", ylabel="validation top-1", title="accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    acc_ax.legend()
    loss_ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
