"""Label-free conversion of a pretrained model: unlabelled images in, a multiplication-free
model out (``adderize convert --calibrate IMAGES``).

:func:`convert_pretrained` runs, on images alone (no labels):

1. the function-preserving conversion (``adderize(model, ops, preserve=True)``);
2. the refit of the adder layers' weights to their float layers' outputs
   (:func:`adderize.train.refit.reconstruct`, ``refit_steps``), and the rounding of the
   shift layers' weights with error feedback on the images (:mod:`adderize.train.gptq`,
   ``gptq``); binary layers read their float weights as they are;
3. the calibration of each layer's output scale and shift (:func:`calibrate`);
4. the move to the ops (blend 0), the scales folded into the BatchNorms
   (:meth:`Anneal.finalize`; dead channels of pretrained BatchNorms fold as the constants
   they compute);
5. optionally, BatchNorm statistics re-estimated on the images (``reestimate_bn``);
6. optionally, distillation from the original's logits on augmented crops of the same
   images (``distill_steps``; BatchNorm statistics frozen, so a few images do not skew
   them);

and checks after each step that every output is finite, naming the first layer that is
not. Images go through the model's own timm preprocessing (``resolve_data_config``,
``create_transform``). The result carries a per-layer report: the op, how much of the float
layer's output the op leaves unexplained (:func:`~adderize.train.refit.fit_residual` on the
float model's inputs) and its compute energy against the conv it replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.train.anneal import Anneal, as_float, blend_layers, calibrate, hooked
from adderize.train.calibrate import recalibrate_bn
from adderize.train.distill import logit_kd
from adderize.train.gptq import round_shift_weights
from adderize.train.refit import fit_residual, reconstruct

__all__ = [
    "IMAGE_SUFFIXES",
    "LabelFreeConfig",
    "LabelFreeResult",
    "LayerFit",
    "check_finite",
    "convert_pretrained",
    "read_images",
]

_log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: fewer images than this: the per-channel fits rest on too few samples (a warning)
MIN_IMAGES = 16


@dataclass(frozen=True)
class LabelFreeConfig:
    """Settings of :func:`convert_pretrained` (the ``adderize convert`` flags)."""

    refit_steps: int = 0  #: adder weight refit batches (0: off)
    refit_lr: float = 0.04
    batch_size: int = 16
    reestimate_bn: bool = False  #: re-estimate BatchNorm statistics on the images
    distill_steps: int = 0  #: label-free distillation steps (0: off)
    distill_lr: float = 1e-4
    temperature: float = 1.0
    seed: int = 0
    budget: float = 0.5  #: energy budget of ``ops="auto"`` (a fraction of all-conv)
    #: round shift weights with error feedback on the images (:mod:`adderize.train.gptq`)
    gptq: bool = True

    def __post_init__(self) -> None:
        for name in ("refit_steps", "distill_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise AdderizeError(f"{name} must be an integer >= 0, got {v!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise AdderizeError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise AdderizeError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        for name in ("refit_lr", "distill_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise AdderizeError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.budget <= 1:
            raise AdderizeError(f"budget is a fraction in (0, 1], got {self.budget!r}")


@dataclass(frozen=True)
class LayerFit:
    """One converted layer: its op, its fit residual (0: the op computes the float layer's
    output up to a per-channel affine; 1: nothing of it) and compute energy vs conv."""

    name: str
    op: str
    residual: float
    energy_ratio: float


@dataclass
class LabelFreeResult:
    """What :func:`convert_pretrained` did: per-layer fits, timings, warnings."""

    layers: list[LayerFit]
    images: int
    energy_ratio: float  #: compute energy of the model against the same model all-conv
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: ``ops="auto"``: the per-layer choice (:class:`adderize.train.auto.AutoChoice`)
    auto: Any = None

    def table(self) -> str:
        rows = [f"{'layer':32s} {'op':7s} {'residual':>8s} {'energy':>7s}"]
        rows += [
            f"{x.name:32s} {x.op:7s} {x.residual:8.3f} {x.energy_ratio:7.3f}" for x in self.layers
        ]
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        rows.append(
            f"{len(self.layers)} layers converted on {self.images} unlabelled images; compute "
            f"energy {self.energy_ratio:.3f}x all-conv; {times}"
        )
        auto = [self.auto.table()] if self.auto is not None else []
        return "\n".join(auto + rows + [f"warning: {w}" for w in self.warnings])


def read_images(source: str | Path) -> list[Any] | torch.Tensor:
    """The images of ``source``: a folder of image files (PIL RGB images, sorted by name) or
    an ``.npy`` array, uint8 ``[N, H, W(, 3)]`` images (PIL) or float ``[N, 3, H, W]``
    already preprocessed (returned as a tensor)."""
    import numpy as np
    from PIL import Image

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise AdderizeError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [Image.open(p).convert("RGB") for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"calibration images not found: {path}")
    if path.suffix != ".npy":
        raise AdderizeError(f"{path}: calibration images are a folder or an .npy file")
    array = np.load(path, allow_pickle=False)
    if array.dtype == np.uint8 and array.ndim in (3, 4):
        return [Image.fromarray(a).convert("RGB") for a in array]
    if np.issubdtype(array.dtype, np.floating) and array.ndim == 4 and array.shape[1] == 3:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise AdderizeError(
        f"{path}: an .npy of images is uint8 [N, H, W] or [N, H, W, 3], or float [N, 3, H, W] "
        f"preprocessed; got {array.dtype} {list(array.shape)}"
    )


def _transforms(model: nn.Module) -> tuple[Any, Any]:
    """The model's timm eval transform, and a training one (random resized crops, flips)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    train = create_transform(
        **cfg, is_training=True, scale=(0.25, 1.0), hflip=0.5, auto_augment=None,
        color_jitter=0.0, re_prob=0.0,
    )  # fmt: skip
    return create_transform(**cfg), train


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(size))


def check_finite(model: nn.Module, x: torch.Tensor, stage: str) -> None:
    """Raise if ``model(x)`` (eval mode) is not finite, naming the first module whose
    output is not, and the ``stage`` of the conversion that produced it."""
    bad: list[str] = []

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, args: Any, out: Any) -> None:
            if not bad and isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
                bad.append(f"{name} ({type(mod).__name__})")

        return fn

    mods = {m: hook(n) for n, m in model.named_modules() if n and not list(m.children())}
    with hooked(model, mods):
        out = model(x)
    if bad or not bool(torch.isfinite(out).all()):
        where = bad[0] if bad else "the model's output"
        raise AdderizeError(f"after {stage}: non-finite values, first at layer {where}")


def _residuals(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each blended layer's :func:`fit_residual` of its op on the float model's input."""
    layers = blend_layers(model)
    out: dict[str, float] = {}

    def hook(name: str, layer: Any) -> Any:
        def fn(mod: nn.Module, args: Any, f: torch.Tensor) -> None:
            out[name] = float(fit_residual(layer, layer.op_forward(args[0]), f))

        return fn

    hooks = {layer: hook(n, layer) for n, (layer, _) in layers.items()}
    with as_float(hooks), hooked(model, hooks):
        model(x)
    return out


def _too_few(model: nn.Module, x: torch.Tensor, refit: bool) -> list[str]:
    """Warnings for fits that rest on too few samples: fewer than :data:`MIN_IMAGES`
    images, or (refit) a layer with fewer output positions than weights per channel."""
    out = []
    if len(x) < MIN_IMAGES:
        out.append(
            f"only {len(x)} images: each layer's per-channel scale and shift rest on them "
            f"alone (give at least {MIN_IMAGES}, better a few hundred)"
        )
    if refit:
        sizes: dict[str, int] = {}
        layers = {n: layer for n, (layer, _) in blend_layers(model).items() if layer.refit}

        def hook(name: str) -> Any:
            def fn(mod: nn.Module, args: Any, y: torch.Tensor) -> None:
                sizes[name] = y[:1].numel() // y.shape[1] * len(x)

            return fn

        with hooked(model, {m: hook(n) for n, m in layers.items()}):
            model(x[:1])
        thin = [n for n, m in layers.items() if sizes.get(n, 0) < 4 * m.weight[0].numel()]
        if thin:
            out.append(
                f"{len(thin)} refit layer(s) see fewer than 4 output positions per weight "
                f"(e.g. {thin[0]!r}): their refit can fit the images rather than the layer"
            )
    return out


def _crops(images: Sequence[Any] | torch.Tensor, train_tf: Any, n: int, gen: torch.Generator):
    idx = torch.randint(len(images), (n,), generator=gen).tolist()
    if isinstance(images, torch.Tensor):  # preprocessed: random flips only
        x = images[idx]
        flip = torch.rand(n, generator=gen) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.stack([train_tf(images[i]) for i in idx])


def _distill(
    student: nn.Module,
    teacher: nn.Module,
    images: Sequence[Any] | torch.Tensor,
    train_tf: Any,
    cfg: LabelFreeConfig,
    progress: bool,
) -> float:
    """Fit ``student`` to ``teacher``'s logits on random crops; BatchNorm statistics frozen
    (eval mode), weights trained (straight-through for shift and binary). Last loss."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.distill_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.distill_steps)
    student.eval()
    loss = torch.zeros(())
    with tqdm(range(cfg.distill_steps), desc="distil", disable=not progress, leave=False) as bar:
        for _ in bar:
            x = _crops(images, train_tf, cfg.batch_size, gen)
            with torch.no_grad():
                target = teacher(x)
            loss = logit_kd(student(x), target, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(kl=f"{float(loss.detach()):.4f}")
    return float(loss.detach())


def convert_pretrained(
    model: nn.Module,
    images: Sequence[Any] | torch.Tensor | str | Path,
    ops: Any = None,
    *,
    keep: Sequence[str] = (),
    config: LabelFreeConfig | None = None,
    progress: bool = True,
) -> tuple[nn.Module, LabelFreeResult]:
    """Convert a pretrained ``model`` to ``ops`` without labels (module docstring).

    Args:
        model: the pretrained float model (left unchanged; it is the distillation teacher).
        images: unlabelled images: PIL images, a folder or ``.npy`` (:func:`read_images`),
            or a preprocessed float tensor ``[N, 3, H, W]``.
        ops: as :func:`adderize.adderize` (an op name, an :class:`OpMapping`, ...), or
            ``"auto"``: each layer's op from its measured sensitivity on the images under
            ``config.budget`` (:mod:`adderize.train.auto`).
        keep: layer names to keep full precision (the first and last are kept anyway).
        config: :class:`LabelFreeConfig` (refit and distillation steps, ...).
        progress: show progress bars.

    Returns:
        The converted model (plain op layers, eval mode) and a :class:`LabelFreeResult`.
    """
    from tqdm.auto import tqdm

    from adderize.energy import energy_report
    from adderize.passes import adderize as convert
    from adderize.train.auto import choose_ops

    cfg = config or LabelFreeConfig()
    if isinstance(images, (str, Path)):
        images = read_images(images)
    if len(images) == 0:
        raise AdderizeError("convert_pretrained needs at least one image")
    eval_tf, train_tf = _transforms(model)
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        x = torch.stack([eval_tf(img) for img in images])
    teacher = model.eval()
    check_finite(teacher, x[: cfg.batch_size], "loading the pretrained model")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    batches = _batches(x, cfg.batch_size)
    auto = None
    if ops == "auto":  # each layer's op from its measured sensitivity (train.auto)
        auto = choose_ops(model, cfg.budget, batches)
        ops = auto.mapping()
        lap("auto")
    student = convert(model, ops, keep=keep, preserve=True)
    warnings = _too_few(student, x, cfg.refit_steps > 0)
    for w in warnings:
        _log.warning(w)
    lap("convert")
    steps = tqdm(total=4, desc="convert", disable=not progress, leave=False)
    if cfg.refit_steps:
        steps.set_description("refit")
        reconstruct(student, _cycle(batches, cfg.refit_steps), cfg.refit_steps, cfg.refit_lr)
        lap("refit")
    if cfg.gptq and round_shift_weights(student, batches):
        lap("gptq")
    steps.update()
    steps.set_description("calibrate")
    residuals = _residuals(student, batches[0])
    calibrate(student, batches)
    lap("calibrate")
    steps.update()
    ops_of = {n: _op_name(layer) for n, (layer, _) in blend_layers(student).items()}
    Anneal(student, 1).finalize()
    check_finite(student, batches[0], "the move to the ops and the fold into BatchNorm")
    if cfg.reestimate_bn:
        steps.set_description("BatchNorm")
        recalibrate_bn(student, batches)
        check_finite(student, batches[0], "re-estimating BatchNorm")
        lap("batchnorm")
    steps.update()
    if cfg.distill_steps:
        steps.set_description("distil")
        _distill(student, teacher, images, train_tf, cfg, progress)
        check_finite(student, batches[0], "distillation")
        lap("distill")
    steps.update()
    steps.close()
    student.eval()
    energy = energy_report(student, (1, *x.shape[1:]))
    by_name = {e.name: e for e in energy.layers}
    layers = []
    for name, residual in residuals.items():
        e = by_name.get(name) or by_name.get(name.removesuffix(".op"))
        ratio = e.compute_pj / max(e.baseline_compute_pj, 1e-30) if e is not None else float("nan")
        layers.append(LayerFit(name.removesuffix(".op"), ops_of[name], residual, ratio))
    total = energy.compute_pj / max(energy.baseline_compute_pj, 1e-30)
    return student, LabelFreeResult(layers, len(x), total, seconds, warnings, auto)


def _op_name(layer: nn.Module) -> str:
    from adderize.passes.registry import op_of_layer

    return op_of_layer(layer) or type(layer).__name__


def _cycle(batches: list[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    return (batches[i % len(batches)] for i in range(n))
