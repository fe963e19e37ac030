"""Accuracy of the int8 adder model against the fp32 adder model, on digits.

For each seed the digits recipe (``adderize finetune``: conv teacher, function-preserving
conversion, anneal to the adder model) is run, or resumed from ``--out`` when it already
ran there (``benchmarks/anneal_curves.py`` writes the same runs); the adder student is then
quantized (:func:`adderize.deploy.quant.quantize_model`: one shared uint8 grid per
layer, calibrated on ``--calibration-batches`` training batches) and both models are
scored on the validation split, the int8 one on the int8 TVM kernel.

    python benchmarks/int8_digits.py [--model resnet10t] [--seeds 0 1 2]
        [--out runs/anneal-curves] [--calibration-batches 4]
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import itertools
from pathlib import Path

import torch

from adderize import log_to_stdout
from adderize.deploy.quant import quantize_model
from adderize.io import load
from adderize.train.data import build_loaders
from adderize.train.finetune import finetune
from adderize.train.recipe import Recipe
from adderize.tvm_schedules.target import describe

TARGET = 0.005


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="runs/anneal-curves")
    parser.add_argument("--calibration-batches", type=int, default=4)
    args = parser.parse_args()
    log_to_stdout()
    print(describe())
    rows = []
    for seed in args.seeds:
        run_dir = Path(args.out) / args.model / f"seed{seed}" / "anneal"
        overrides = [f"model.name={args.model}", f"seed={seed}", f"epochs={args.epochs}"]
        recipe = Recipe().override([*overrides, f"out={run_dir}"])
        result = finetune(recipe, resume=run_dir.is_dir(), progress=False)
        fp32 = load(result.student_file).eval()
        train, val = build_loaders(recipe.data)
        batches = [x for x, _ in itertools.islice(train, args.calibration_batches)]
        int8, report = quantize_model(fp32, batches)
        a32, a8 = accuracy(fp32, val), accuracy(int8, val)
        print(f"seed {seed}: {report.summary()}")
        print(f"  fp32 adder {a32:.4f}, int8 adder {a8:.4f} ({(a8 - a32) * 100:+.2f} pt)")
        rows.append((seed, a32, a8))
    print(f"\n| {args.model} seed | fp32 adder | int8 adder | difference | within 0.5 pt |")
    print("|---|---|---|---|---|")
    for seed, a32, a8 in rows:
        ok = "yes" if a8 >= a32 - TARGET else "no"
        print(f"| {seed} | {a32:.4f} | {a8:.4f} | {(a8 - a32) * 100:+.2f} pt | {ok} |")


if __name__ == "__main__":
    main()
