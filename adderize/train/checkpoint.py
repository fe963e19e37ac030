"""What a training run writes so that ``--resume`` continues it: checkpoints (written
atomically, read without executing pickled code), random states and the metrics log."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adderize._errors import AdderizeError, brief

__all__ = ["atomic_save", "load_checkpoint", "rng_state", "set_rng_state", "write_metrics"]


def rng_state() -> dict[str, Any]:
    """torch's, numpy's and Python's random states, as tensors and plain data (loadable
    with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file then rename: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or pickled code refused
        raise AdderizeError(
            f"{path} is not a checkpoint adderize can resume from ({type(e).__name__}: "
            f"{brief(e)}); delete it to start the phase over"
        ) from None
    if not isinstance(state, dict):
        raise AdderizeError(f"{path}: a checkpoint is a mapping, got {type(state).__name__}")
    return state


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch rows as ``metrics.json`` and ``metrics.csv`` in ``run_dir``."""
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
