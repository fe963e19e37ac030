"""``ops="auto"`` against all-adder, post-training (no fine-tuning), on digits-trained nets.

For each model and seed the conv teacher is trained by the digits recipe's teacher phase
(32 px); then, with no fine-tuning, it is converted label-free
(:func:`adderize.train.labelfree.convert_pretrained` on the training images) two ways:
every layer adder (refit ``--refit-steps``, calibrated, folded), and ``ops="auto"`` at
``--budget`` (each layer adder or shift from its measured sensitivity; the same refit for
its adder layers). Prints the teacher's validation top-1, each student's top-1 agreement
with the teacher on the validation set, its compute energy against all-conv, and the CPU::

    python benchmarks/auto_digits.py [--models mobilenetv3_small_100 mobilenetv2_100
        efficientnet_b0] [--seeds 0] [--budget 0.5] [--refit-steps 100]
"""

from __future__ import annotations

# isort: off
import adderize  # noqa: F401

# isort: on
import argparse
import tempfile
import time
from pathlib import Path

import torch

from adderize.train.data import build_loaders
from adderize.train.distributed import init_context
from adderize.train.finetune import prepare_teacher
from adderize.train.labelfree import LabelFreeConfig, convert_pretrained
from adderize.train.recipe import Recipe
from adderize.tvm_schedules.target import describe

MODELS = ("mobilenetv3_small_100", "mobilenetv2_100", "efficientnet_b0")


def _inputs(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--refit-steps", type=int, default=100)
    args = parser.parse_args()
    print(describe())
    rows = []
    for name in args.models:
        for seed in args.seeds:
            recipe = Recipe().override([f"model.name={name}", f"seed={seed}"])
            torch.manual_seed(seed)
            with init_context() as ctx, tempfile.TemporaryDirectory() as tmp:
                loaders = build_loaders(recipe.data, ctx.rank, ctx.world)
                teacher = prepare_teacher(recipe, loaders, Path(tmp), ctx, [], progress=False)
            train_x, _ = _inputs(loaders[0])
            val_x, val_y = _inputs(loaders[1])
            with torch.no_grad():
                t_pred = teacher(val_x).argmax(1)
            acc = float((t_pred == val_y).float().mean())
            cfg = LabelFreeConfig(refit_steps=args.refit_steps, budget=args.budget)
            line = [f"{name} seed {seed}: teacher {acc:.4f}"]
            for ops in ("adder", "auto"):
                start = time.perf_counter()
                student, result = convert_pretrained(teacher, train_x, ops, config=cfg,
                                                     progress=False)  # fmt: skip
                with torch.no_grad():
                    agree = float((student(val_x).argmax(1) == t_pred).float().mean())
                mix = {}
                for layer in result.layers:
                    mix[layer.op] = mix.get(layer.op, 0) + 1
                line.append(f"{ops}: agreement {agree:.4f}, energy {result.energy_ratio:.3f}x, "
                            f"{mix}, {time.perf_counter() - start:.0f} s")  # fmt: skip
                rows.append((name, seed, ops, agree))
            print("\n  ".join(line), flush=True)
    print("\n| model | seed | all adder | auto | ratio |\n|---|---|---|---|---|")
    for name in args.models:
        for seed in args.seeds:
            got = {ops: a for n, s, ops, a in rows if n == name and s == seed}
            ratio = got["auto"] / max(got["adder"], 1e-9)
            print(f"| {name} | {seed} | {got['adder']:.4f} | {got['auto']:.4f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
