"""Function-preserving conversion vs today's conversion, per fine-tuning epoch, on digits.

For each model and seed the conv teacher is trained once by the digits recipe; the same
teacher is then converted two ways and fine-tuned for the same epochs with the same recipe:

* plain: ``adderize(model)`` (adder layers holding the conv weights from the first step);
* anneal: ``adderize(model, preserve=True)``, blended from the conv model into the adder
  model over the first half of fine-tuning (:mod:`adderize.train.anneal`).

Prints validation top-1 per epoch (the anneal's rows say the blend: 0 is the
multiplication-free model), a summary table against the targets, and writes the curves to
``--plot``.

    python benchmarks/anneal_curves.py [--models resnet10t mobilenetv3_small_100]
        [--seeds 0 1 2] [--epochs 4] [--out runs/anneal-curves] [--plot docs/anneal-digits.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from adderize.kernels.machine import cpu_model
from adderize.train.finetune import finetune
from adderize.train.recipe import Recipe

VARIANTS = {"plain": ["anneal.enabled=false"], "anneal": ["anneal.enabled=true"]}


def run(model: str, seed: int, epochs: int, out: Path) -> dict[str, Any]:
    teacher = out / model / f"seed{seed}" / "anneal" / "teacher.safetensors"
    rows: dict[str, Any] = {}
    for variant in ("anneal", "plain"):  # the anneal run trains the teacher
        run_dir = out / model / f"seed{seed}" / variant
        overrides = [f"model.name={model}", f"seed={seed}", f"epochs={epochs}", f"out={run_dir}"]
        overrides += VARIANTS[variant]
        if variant == "plain":
            overrides.append(f"model.pretrained_file={teacher}")
        r = finetune(Recipe().override(overrides), resume=run_dir.is_dir(), progress=False)
        student = [h for h in r.history if h["phase"] == "student"][-epochs:]
        rows["teacher"] = r.teacher_acc
        rows[variant] = [h["val_acc"] for h in student]
        if variant == "anneal":
            rows["blend"] = [h["blend"] for h in student]
        rows[f"{variant}_compute"] = r.compute_pj / r.conv_compute_pj
    return rows


def plot(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (model, seeds) in zip(axes[0], results.items(), strict=True):
        for i, (_seed, rows) in enumerate(sorted(seeds.items())):
            epochs = range(1, len(rows["anneal"]) + 1)
            lab = i == 0
            ax.axhline(rows["teacher"], color="tab:blue", ls="--", alpha=0.6,
                       label="conv teacher" if lab else None)  # fmt: skip
            ax.plot(epochs, rows["plain"], "o-", color="tab:gray", alpha=0.8,
                    label="plain conversion" if lab else None)  # fmt: skip
            ax.plot(epochs, rows["anneal"], "o-", color="tab:red", alpha=0.8,
                    label="function-preserving + anneal" if lab else None)  # fmt: skip
        ax.set(xlabel="fine-tuning epoch", ylabel="validation top-1", ylim=(0, 1.01),
               title=f"{model} on digits (seeds {sorted(seeds)})")  # fmt: skip
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet10t", "mobilenetv3_small_100"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="runs/anneal-curves")
    parser.add_argument("--plot", default="docs/anneal-digits.png")
    args = parser.parse_args()
    out = Path(args.out)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for model in args.models:
        for seed in args.seeds:
            results.setdefault(model, {})[seed] = run(model, seed, args.epochs, out)
    (out / "curves.json").write_text(json.dumps(results, indent=1))
    plot(results, Path(args.plot))

    print(f"\n{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model, seeds in results.items():
        print(f"\n{model}: validation top-1 per fine-tuning epoch (digits, 32 px)")
        for seed, rows in sorted(seeds.items()):
            blends = " ".join(f"{b:.2f}" for b in rows["blend"])
            print(f"  seed {seed}: teacher {rows['teacher']:.4f}")
            print("    plain  " + " ".join(f"{a:.4f}" for a in rows["plain"]))
            print("    anneal " + " ".join(f"{a:.4f}" for a in rows["anneal"]) +
                  f"   (blend after each epoch: {blends})")  # fmt: skip
    print(
        "\n| model | seed | teacher | plain, epoch 1 / last | anneal, epoch 1 / last "
        "| first epoch within 2 pt | last within 0.5 pt |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, seeds in results.items():
        for seed, rows in sorted(seeds.items()):
            t, p, a = rows["teacher"], rows["plain"], rows["anneal"]
            print(f"| {model} | {seed} | {t:.4f} | {p[0]:.4f} / {p[-1]:.4f} "
                  f"| {a[0]:.4f} / {a[-1]:.4f} | {'yes' if a[0] >= t - 0.02 else 'no'} "
                  f"| {'yes' if a[-1] >= t - 0.005 else 'no'} |")  # fmt: skip
    print(f"\ncurves: {args.plot}; runs: {out}")


if __name__ == "__main__":
    main()
