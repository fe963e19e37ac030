"""Fine-tuning recipes: typed, YAML-backed configuration for ``adderize finetune``.

A recipe file only supplies defaults: every key can be overridden (``optim.lr=0.1``) and the
resolved recipe is written into the run directory. The dataclass defaults *are* the
``digits`` recipe (``recipes/digits.yaml`` repeats them and a test keeps the two equal), so
``adderize demo`` runs without any file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adderize._config import from_data
from adderize._errors import AdderizeError
from adderize._yaml import parse_yaml, read_yaml

__all__ = [
    "AdderCfg",
    "AnnealCfg",
    "DataCfg",
    "DistillCfg",
    "ModelCfg",
    "OptimCfg",
    "Recipe",
    "SchedCfg",
    "TeacherCfg",
    "apply_overrides",
]

#: the recipe format written by ``Recipe.to_dict`` (files without the key read as it)
FORMAT_VERSION = 1

DATASETS = ("digits", "folder")
DISTILL_KINDS = ("none", "logit", "kernel")
AMP_MODES = ("none", "bf16")


def _choice(label: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AdderizeError(f"{label} must be one of {', '.join(choices)}; got {value!r}")


def _positive(label: str, value: float, allow_zero: bool = False) -> None:
    if not (value >= 0 if allow_zero else value > 0):
        raise AdderizeError(f"{label} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class ModelCfg:
    """The timm model to convert; ``pretrained_file`` holds local weights (no hub)."""

    name: str = "resnet10t"
    num_classes: int = 10
    pretrained_file: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCfg:
    """Data and augmentation, passed to ``timm.data.create_loader``.

    ``dataset``: ``digits`` (scikit-learn's 8x8 digits, upscaled, offline) or ``folder``
    (an ImageFolder-style tree under ``data_dir`` with ``train_split`` / ``val_split``).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    input_size: int = 32
    batch_size: int = 64
    workers: int = 0
    scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.9, 1.1])
    hflip: float = 0.0
    color_jitter: float = 0.0
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        _positive("data.input_size", self.input_size)
        _positive("data.batch_size", self.batch_size)
        _positive("data.workers", self.workers, allow_zero=True)


@dataclass
class OptimCfg:
    """``timm.optim.create_optimizer_v2`` arguments."""

    opt: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)


@dataclass
class SchedCfg:
    """``timm.scheduler.create_scheduler_v2`` arguments (stepped per update)."""

    sched: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0


@dataclass
class TeacherCfg:
    """The conv teacher: ``epochs`` > 0 trains it first when no pretrained file is given."""

    epochs: int = 8
    lr: float = 0.1


@dataclass
class AdderCfg:
    """The papers' scheme: adaptive LR ``eta`` (eq. 33) and p decaying ``p_start -> p_end``
    over the first ``p_decay`` fraction of training.

    The digits default starts at p = 1: l_p kernels cost about 10x an l1 step on CPU, and a
    short fine-tune from conv weights reaches the same accuracy without them (docs/measurements.md).
    The ImageNet recipes use the papers' 2 -> 1.
    """

    eta: float = 0.2
    #: normalise each optimiser step's gradient ("step") or each backward's ("backward":
    #: the official code; differs under gradient accumulation / DDP), see adaptive_lr
    eta_per: str = "step"
    p_start: float = 1.0
    p_end: float = 1.0
    p_decay: float = 0.75

    def __post_init__(self) -> None:
        _positive("adder.eta", self.eta)
        from adderize.train.adaptive_lr import PER

        _choice("adder.eta_per", self.eta_per, PER)
        if not 0 <= self.p_decay <= 1:
            raise AdderizeError(
                f"adder.p_decay is a fraction of training in [0, 1], got {self.p_decay}"
            )


@dataclass
class AnnealCfg:
    """Function-preserving conversion (:mod:`adderize.train.anneal`): the student starts as
    the conv model (``adderize(..., preserve=True)``) and blends into the op model over the
    first ``fraction`` of fine-tuning (``shape``: linear or cosine), after refitting the
    adder layers' weights to their conv layers' outputs for ``refit_steps`` training
    batches (Adam at ``refit_lr``; 0 = off, :func:`adderize.train.refit.reconstruct`) and
    fitting the ops' output scales on ``calibration_batches`` training batches (on which
    the shift layers' weights are first rounded with error feedback where ``gptq``,
    :mod:`adderize.train.gptq`);
    ``local_weight`` weighs each op's local reconstruction of its conv layer's output in
    the loss. Used when the conv
    model is trained (a pretrained file, or ``teacher.epochs`` > 0); ``enabled: false``
    converts as before (the op model from the start).
    """

    enabled: bool = True
    fraction: float = 0.5
    shape: str = "cosine"
    calibration_batches: int = 4
    local_weight: float = 50.0
    refit_steps: int = 100
    refit_lr: float = 0.04
    refit_chain: float = 0.0
    gptq: bool = True

    def __post_init__(self) -> None:
        from adderize.train.anneal import SHAPES

        _choice("anneal.shape", self.shape, SHAPES)
        if not 0 < self.fraction <= 1:
            raise AdderizeError(
                f"anneal.fraction is a fraction of training in (0, 1], got {self.fraction}"
            )
        _positive("anneal.calibration_batches", self.calibration_batches)
        _positive("anneal.local_weight", self.local_weight, allow_zero=True)
        _positive("anneal.refit_steps", self.refit_steps, allow_zero=True)
        _positive("anneal.refit_lr", self.refit_lr)
        if not 0 <= self.refit_chain <= 1:
            raise AdderizeError(
                f"anneal.refit_chain is a fraction of the refit steps in [0, 1], got "
                f"{self.refit_chain}"
            )


@dataclass
class DistillCfg:
    """Distillation from the original conv model.

    ``kind``: ``none``, ``logit`` (Hinton KD at ``temperature``, weight ``alpha`` against the
    label loss) or ``kernel`` (logit KD plus Gaussian-kernel feature matching at
    ``features``, weight ``feature_weight``; empty ``features`` = timm's feature_info).
    """

    kind: str = "logit"
    alpha: float = 0.7
    temperature: float = 4.0
    feature_weight: float = 1.0
    features: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("distill.kind", self.kind, DISTILL_KINDS)
        if not 0 <= self.alpha <= 1:
            raise AdderizeError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        _positive("distill.temperature", self.temperature)


@dataclass
class Recipe:
    """A whole convert-and-finetune run. Defaults are the offline ``digits`` recipe."""

    model: ModelCfg = field(default_factory=ModelCfg)
    ops: dict[str, Any] = field(default_factory=lambda: {"default": "adder"})
    # > 0: each layer's op chosen by ops="auto" (adderize.train.auto: measured sensitivity
    # on anneal.calibration_batches training batches) under this energy budget, a fraction
    # of the all-conv model's; ``ops`` then only sets keep_first / keep_last. 0: ops as given.
    auto_budget: float = 0.0
    keep: list[str] = field(default_factory=list)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    adder: AdderCfg = field(default_factory=AdderCfg)
    anneal: AnnealCfg = field(default_factory=AnnealCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    epochs: int = 4
    # Before each evaluation of a student with adder layers, re-estimate BatchNorm statistics
    # over this many training batches (0 = off): adder outputs move fast while the running
    # averages lag behind (train/eval gap).
    bn_recalibration: int = 20
    amp: str = "none"
    ema: float = 0.0
    seed: int = 0
    out: str = "runs/digits"

    def __post_init__(self) -> None:
        _choice("amp", self.amp, AMP_MODES)
        _positive("epochs", self.epochs)
        _positive("bn_recalibration", self.bn_recalibration, allow_zero=True)
        if not 0 <= self.auto_budget <= 1:
            raise AdderizeError(
                f"auto_budget is a fraction of the all-conv energy in (0, 1] (0 = off), got "
                f"{self.auto_budget}"
            )
        if not 0 <= self.ema < 1:
            raise AdderizeError(f"ema is a decay in [0, 1) (0 = off), got {self.ema}")
        from adderize.passes.mapping import OpMapping

        OpMapping.coerce(self.ops)  # validate op names now, not after the teacher trained

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        return from_data(cls, data, source, version=FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
        """Read a recipe file (safe YAML), then apply ``key.sub=value`` overrides."""
        path = Path(path)
        data = read_yaml(path, "recipe") or {}
        if not isinstance(data, dict):
            raise AdderizeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(apply_overrides(data, overrides), source=str(path))

    def override(self, overrides: list[str] | tuple[str, ...]) -> Recipe:
        return Recipe.from_dict(apply_overrides(self.to_dict(), overrides), source="overrides")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=0.1", "distill.kind=none"]`` applied to a nested dict (values are YAML)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AdderizeError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=0.1)")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AdderizeError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = parse_yaml(raw, f"override {item!r}")
    return data
