"""Function-preserving conversion vs today's conversion, per fine-tuning epoch, on digits.

For each model and seed the conv teacher is trained once by the digits recipe; the same
teacher is then converted three ways and fine-tuned for the same epochs with the same recipe:

* plain: ``adderize(model)`` (adder layers holding the conv weights from the first step);
* anneal: ``adderize(model, preserve=True)``, the adder weights refit to the conv layers'
  outputs (``anneal.refit_steps``), then blended from the conv model into the adder model
  over the first half of fine-tuning (:mod:`adderize.train.anneal`);
* no refit: the same anneal without the refit (``anneal.refit_steps=0``), the ablation;
* auto: the anneal with each layer's op chosen by ``ops="auto"`` under ``--budget`` (0.5 of
  the all-conv energy): measured sensitivity, adder or shift per layer (issue 31's runs).

The first epoch's time includes the refit and the calibration.

Prints validation top-1 per epoch (the anneal's rows say the blend: 0 is the
multiplication-free model), a summary table against the targets, and writes the curves to
``--plot``.

    python benchmarks/anneal_curves.py [--models resnet10t mobilenetv3_small_100]
        [--seeds 0 1 2] [--epochs 4] [--out runs/anneal-curves] [--plot docs/anneal-digits.png]
        [--refit-steps N] [--variants anneal auto] [--budget 0.5]
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import json
from pathlib import Path
from typing import Any

import torch

from adderize import log_to_stdout
from adderize.train.finetune import finetune
from adderize.train.recipe import Recipe
from adderize.tvm_schedules.target import describe

VARIANTS = {
    "anneal": ["anneal.enabled=true"],
    "norefit": ["anneal.enabled=true", "anneal.refit_steps=0"],
    "plain": ["anneal.enabled=false"],
    "auto": ["anneal.enabled=true"],  # + auto_budget=--budget
}


def run(
    model: str,
    seed: int,
    epochs: int,
    out: Path,
    refit_steps: int | None,
    variants: list[str],
    budget: float,
) -> dict[str, Any]:
    teacher: Path | None = None  # trained by the first variant's run, reused by the others
    rows: dict[str, Any] = {}
    for variant in variants:
        folder = variant
        overrides = [f"seed={seed}", f"epochs={epochs}", *VARIANTS[variant]]
        if variant == "auto":
            overrides.append(f"auto_budget={budget}")
        if variant == "anneal" and refit_steps is not None:  # beside the default run
            folder = f"anneal-refit{refit_steps}"
            overrides.append(f"anneal.refit_steps={refit_steps}")
        run_dir = out / model / f"seed{seed}" / folder
        overrides += [f"model.name={model}", f"out={run_dir}"]
        if teacher is not None:
            overrides.append(f"model.pretrained_file={teacher}")
        r = finetune(Recipe().override(overrides), resume=run_dir.is_dir(), progress=False)
        teacher = teacher or run_dir / "teacher.safetensors"
        student = [h for h in r.history if h["phase"] == "student"][-epochs:]
        rows["teacher"] = r.teacher_acc
        rows[variant] = [h["val_acc"] for h in student]
        rows[f"{variant}_seconds"] = [h["seconds"] for h in student]
        if variant == "anneal":
            rows["blend"] = [h["blend"] for h in student]
        rows[f"{variant}_compute"] = r.compute_pj / r.conv_compute_pj
        rows[f"{variant}_ops"] = r.ops
        rows[f"{variant}_float"] = r.float_layers
    return rows


STYLE = {  # variant: (label, colour)
    "plain": ("plain conversion", "tab:gray"),
    "norefit": ("function-preserving + anneal, no refit", "tab:orange"),
    "anneal": ("function-preserving: refit + anneal", "tab:red"),
    "auto": ("ops=auto (adder/shift per layer) + anneal", "tab:green"),
}


def plot(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(results), 4))
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (model, seeds) in zip(axes[0], results.items(), strict=True):
        for i, (_seed, rows) in enumerate(sorted(seeds.items())):
            epochs = range(1, len(rows[next(v for v in STYLE if v in rows)]) + 1)
            lab = i == 0
            ax.axhline(rows["teacher"], color="tab:blue", ls="--", alpha=0.6,
                       label="conv teacher" if lab else None)  # fmt: skip
            for variant, (label, colour) in STYLE.items():
                if variant not in rows:
                    continue
                ax.plot(epochs, rows[variant], "o-", color=colour, alpha=0.8,
                        label=label if lab else None)  # fmt: skip
        ax.set_xticks(list(epochs))
        ax.set(xlabel="fine-tuning epoch", ylabel="validation top-1", ylim=(0, 1.01),
               title=f"{model} on digits (seeds {sorted(seeds)})")  # fmt: skip
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet10t", "mobilenetv3_small_100"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="runs/anneal-curves")
    parser.add_argument("--plot", default="docs/anneal-digits.png")
    parser.add_argument("--refit-steps", type=int, default=None,
                        help="refit steps of the anneal run (default: the recipe's); runs "
                        "beside the default one, from the teacher it trained")  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["anneal", "norefit", "plain"],
                        help="conversions to fine-tune, in order (the first trains the "
                        "teacher the others start from)")  # fmt: skip
    parser.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="energy budget of the auto variant (fraction of all-conv)",
    )
    args = parser.parse_args()
    log_to_stdout()
    out = Path(args.out)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for model in args.models:
        for seed in args.seeds:
            results.setdefault(model, {})[seed] = run(
                model, seed, args.epochs, out, args.refit_steps, args.variants, args.budget
            )
    tag = "" if args.refit_steps is None else f"-refit{args.refit_steps}"
    (out / f"curves{tag}.json").write_text(json.dumps(results, indent=1))
    plot(results, Path(args.plot))

    print(f"\n{describe()}\ntorch {torch.__version__}")
    for model, seeds in results.items():
        print(f"\n{model}: validation top-1 per fine-tuning epoch (digits, 32 px)")
        for seed, rows in sorted(seeds.items()):
            blends = " ".join(f"{b:.2f}" for b in rows.get("blend", []))
            print(f"  seed {seed}: teacher {rows['teacher']:.4f}")
            for variant in (v for v in STYLE if v in rows):
                accs = " ".join(f"{a:.4f}" for a in rows[variant])
                secs = " ".join(f"{t:.0f}" for t in rows[f"{variant}_seconds"])
                print(f"    {variant:8s}{accs}   seconds {secs}")
            if blends:
                print(f"    (anneal: blend after each epoch {blends}; the first epoch's "
                      "seconds include the refit and calibration)")  # fmt: skip
    if {"plain", "norefit"} <= set(args.variants):
        print(
            "\n| model | seed | teacher | plain, epoch 1 / last | no refit, epoch 1 / last "
            "| refit + anneal, epoch 1 / last | first epoch within 2 pt | last within 0.5 pt "
            "| refit + anneal seconds, epoch 1 / later |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for model, seeds in results.items():
            for seed, rows in sorted(seeds.items()):
                t, p, n, a = rows["teacher"], rows["plain"], rows["norefit"], rows["anneal"]
                sec = rows["anneal_seconds"]
                later = sum(sec[1:]) / max(len(sec) - 1, 1)
                print(f"| {model} | {seed} | {t:.4f} | {p[0]:.4f} / {p[-1]:.4f} "
                      f"| {n[0]:.4f} / {n[-1]:.4f} | {a[0]:.4f} / {a[-1]:.4f} "
                      f"| {'yes' if a[0] >= t - 0.02 else 'no'} "
                      f"| {'yes' if a[-1] >= t - 0.005 else 'no'} "
                      f"| {sec[0]:.0f} / {later:.0f} |")  # fmt: skip
    if "auto" in args.variants:
        print(
            f"\nauto at budget {args.budget}: the issue-31 bar is the last epoch within 1 pt of "
            "the teacher, no float layer but the stem and classifier, compute <= 0.5x"
        )
        print("| model | seed | teacher | auto, epoch 1 / last | within 1 pt | compute | ops "
              "| float layers |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for model, seeds in results.items():
            for seed, rows in sorted(seeds.items()):
                t, a = rows["teacher"], rows["auto"]
                ops = ", ".join(f"{n} {op}" for op, n in sorted(rows["auto_ops"].items()))
                print(f"| {model} | {seed} | {t:.4f} | {a[0]:.4f} / {a[-1]:.4f} "
                      f"| {'yes' if a[-1] >= t - 0.01 else 'no'} "
                      f"| {rows['auto_compute']:.3f}x | {ops} "
                      f"| {', '.join(rows['auto_float'])} |")  # fmt: skip
    print(f"\ncurves: {args.plot}; runs: {out}")


if __name__ == "__main__":
    main()
