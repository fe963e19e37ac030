"""Datasets and loaders for fine-tuning, through timm's data pipeline.

Both datasets expose ``transform`` so that ``timm.data.create_loader`` installs timm's
train / eval transforms on them: the offline ``digits`` set (scikit-learn's 1,797 8x8
handwritten digits as RGB PIL images, a fixed stratified 75/25 split) and any
ImageFolder-style tree through ``timm.data.create_dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from adderize._errors import AdderizeError
from adderize.train.recipe import DataCfg

__all__ = ["DigitsDataset", "build_dataset", "build_loaders"]


class DigitsDataset(Dataset):
    """scikit-learn's digits as ``(PIL RGB image, label)``; ``split`` is train or validation."""

    SPLITS = ("train", "validation")

    def __init__(self, split: str = "train", transform: Any = None) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in self.SPLITS:
            raise AdderizeError(
                f"digits split must be one of {', '.join(self.SPLITS)}, got {split!r}"
            )
        x, y = load_digits(return_X_y=True)
        train, val = train_test_split(range(len(y)), test_size=0.25, random_state=0, stratify=y)
        idx = train if split == "train" else val
        pixels = (x[idx] * (255.0 / 16.0)).round().astype("uint8").reshape(-1, 8, 8)
        self.images = [Image.fromarray(p, mode="L").convert("RGB") for p in pixels]
        self.targets = [int(t) for t in y[idx]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


def build_dataset(cfg: DataCfg, split: str) -> Dataset:
    """The ``train`` or ``validation`` dataset named by ``cfg``."""
    if cfg.dataset == "digits":
        return DigitsDataset("train" if split == "train" else "validation")
    from timm.data import create_dataset

    if cfg.data_dir is None:
        raise AdderizeError("data.dataset=folder needs a data directory: pass --data-dir DIR")
    root = Path(cfg.data_dir)
    name = cfg.train_split if split == "train" else cfg.val_split
    if not (root / name).is_dir():
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        where = f"it has {subdirs}" if root.is_dir() else "it does not exist"
        raise FileNotFoundError(
            f"data directory {root} has no {name!r} split ({where}); set --data-dir or "
            "data.train_split / data.val_split"
        )
    return create_dataset("", root=str(root), split=name, is_training=split == "train")


def _loader_kwargs(cfg: DataCfg) -> dict[str, Any]:
    return {
        "input_size": (3, cfg.input_size, cfg.input_size),
        "batch_size": cfg.batch_size,
        "interpolation": cfg.interpolation,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "crop_pct": cfg.crop_pct,
        "num_workers": cfg.workers,
        "use_prefetcher": False,
        "device": torch.device("cpu"),
    }


def build_loaders(cfg: DataCfg, rank: int = 0, world: int = 1) -> tuple[DataLoader, DataLoader]:
    """(train, validation) loaders; with ``world > 1`` each rank gets its shard of both.

    The validation shard is ``range(rank, N, world)`` without padding, so summing correct
    counts over ranks gives the exact accuracy.
    """
    from timm.data import create_loader

    kwargs = _loader_kwargs(cfg)
    train = create_loader(
        build_dataset(cfg, "train"),
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        distributed=world > 1,
        **kwargs,
    )
    val_set = build_dataset(cfg, "validation")
    val = create_loader(val_set, is_training=False, **kwargs)  # installs timm's eval transform
    if world > 1:
        shard = torch.utils.data.Subset(val_set, range(rank, len(val_set), world))
        val = DataLoader(shard, batch_size=cfg.batch_size, num_workers=cfg.workers)
    return train, val
