"""The digits table of docs/measurements.md: conv teacher vs adder student, with or without KD.

For each seed, the conv teacher (timm resnet10t) is trained once by the digits recipe, then
the same converted start point is fine-tuned three ways: no distillation, logit KD, and
logit + kernel feature KD, for 10 epochs at lr 0.05 from the plain conversion
(``anneal.enabled=false``:
the function-preserving conversion is measured by ``benchmarks/anneal_curves.py``). Energy is
the 45 nm model's, for one 32x32 image.

    python benchmarks/digits_recipe.py [--seeds 0 1 2] [--out runs/digits-table]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adderize import log_to_stdout
from adderize.train.finetune import finetune
from adderize.train.recipe import Recipe

VARIANTS = {"adder": "none", "adder + KD": "logit", "adder + kernel KD": "kernel"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/digits-table")
    args = parser.parse_args()
    log_to_stdout()
    out = Path(args.out)
    results: dict[str, list[dict]] = {"conv": [], **{k: [] for k in VARIANTS}}
    for seed in args.seeds:
        # the first variant trains the teacher; the others start from the same teacher file
        teacher = out / f"seed{seed}" / "none" / "teacher.safetensors"
        for label, kind in VARIANTS.items():
            run = out / f"seed{seed}" / kind
            overrides = [f"seed={seed}", f"out={run}", f"distill.kind={kind}"]
            overrides += ["epochs=10", "optim.lr=0.05", "anneal.enabled=false"]
            if kind != "none":
                overrides.append(f"model.pretrained_file={teacher}")
            r = finetune(Recipe().override(overrides), resume=run.is_dir(), progress=False)
            if kind == "none":
                results["conv"].append({"acc": r.teacher_acc, "ratio": 1.0, "total": 1.0})
            results[label].append({
                "acc": r.student_acc,
                "ratio": r.compute_pj / r.conv_compute_pj,
                "total": r.energy_pj / r.conv_energy_pj,
            })  # fmt: skip
    (out / "table.json").write_text(json.dumps(results, indent=1))
    print(f"\ndigits, timm resnet10t at 32 px, seeds {args.seeds}")
    print("| model | top-1 (min-max over seeds) | compute energy vs conv | total incl. memory |")
    print("|---|---|---|---|")
    for label, rows in results.items():
        accs = [r["acc"] for r in rows]
        print(f"| {label} | {min(accs):.3f}-{max(accs):.3f} | {rows[0]['ratio']:.3f}x "
              f"| {rows[0]['total']:.3f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
