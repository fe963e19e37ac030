"""What sub-networks inherit from the one-shot supernet, with the adder candidates' weights
read as the conv's (a copy, not refit) or refit to the conv layers' outputs.

On digits (the resnet10t teacher of ``oneshot_search.py``), for an all-adder sub-network
and random sub-networks within the budget: top-1 with inherited weights (BatchNorm
re-estimated) before and after the supernet's training, and the same assignments
fine-tuned from the teacher as the multi-trial search does.

    python benchmarks/oneshot_inheritance.py [--seed 0] [--samples 5] [--out runs/inherit]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from adderize import log_to_stdout
from adderize.search import SearchSettings
from adderize.search.evaluate import Evaluator, evaluate_assignment
from adderize.search.oneshot import OpSupernet, score_subnet
from adderize.search.oneshot_run import train_supernet
from adderize.train.recipe import Recipe
from adderize.tvm_schedules.target import describe

QUICK = ["model.name=resnet10t", "data.input_size=16", "teacher.epochs=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--supernet-epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/inherit")
    args = parser.parse_args()
    log_to_stdout()
    print(describe())
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    recipe = Recipe().override([*QUICK, f"seed={args.seed}", f"out={out}"])
    settings = SearchSettings(budget=0.3, seed=args.seed, supernet_epochs=args.supernet_epochs)
    ev = Evaluator(out, recipe, settings)
    space, (train, val) = ev.space, ev.loaders
    calibration = [x for x, _ in train][: settings.calibration_batches]
    rng = np.random.default_rng(args.seed)
    samples = {"all-adder": {n: "adder" for n in space.layers}}
    while len(samples) < args.samples + 1:
        a = space.random(rng)
        if space.feasible(a):
            samples[f"random {len(samples)}"] = a
    table: dict[str, dict[str, float]] = {n: {} for n in samples}
    for label, steps in (("as conv", 0), ("refit", settings.refit_steps)):
        torch.manual_seed(args.seed)
        tic = time.perf_counter()
        net = OpSupernet(ev.teacher, space, calibration, steps, settings.refit_lr)
        print(f"{label}: supernet built in {time.perf_counter() - tic:.1f} s")
        for when in ("before", "after"):
            if when == "after":
                train_supernet(net, ev, settings, out / label.replace(" ", "-"))
            for name, a in samples.items():
                # freeze's budget check skipped: the all-adder sample is over budget
                sub = copy.deepcopy(net.model)
                for layer, op in a.items():
                    sub.set_submodule(layer, sub.get_submodule(layer)[op])
                table[name][f"{label} {when}"] = score_subnet(sub, calibration, val)
    for name, a in samples.items():
        if name != "all-adder":
            table[name]["fine-tuned"] = evaluate_assignment(ev, a, name.replace(" ", "-"))[
                "accuracy"
            ]
    cols = list(dict.fromkeys(k for row in table.values() for k in row))
    print(f"\nseed {args.seed}, supernet {args.supernet_epochs} epochs, refit "
          f"{settings.refit_steps} steps at {settings.refit_lr}; fine-tuned: "
          f"{settings.trial_epochs} epochs from the teacher (multi-trial)")  # fmt: skip
    print("| sub-network | energy | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for name, row in table.items():
        energy = space.energy(samples[name]) / space.conv_pj
        cells = " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in cols)
        print(f"| {name} | {energy:.3f} | {cells} |")


if __name__ == "__main__":
    main()
