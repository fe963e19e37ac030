"""One-shot vs multi-trial operator search on digits, per seed, in one run.

For each seed the conv teacher is trained once (by the multi-trial run) and both searches
use it, with the same energy budget and number of candidates:

* multi-trial: regularized evolution, every candidate fine-tuned for ``--trial-epochs``
  (``adderize search --engine sequential``; the NNI engine adds process start-up);
* one-shot: NNI's ``RandomOneShot`` trains the weight-sharing supernet for
  ``--supernet-epochs``, NNI's ``RegularizedEvolution`` scores sub-networks with its
  weights (``adderize search --mode oneshot``).

Prints each search's time (teacher excluded) against one candidate fine-tune of the
multi-trial run, both Pareto fronts, and how many points of the multi-trial front the
one-shot front matches (a point at equal or lower energy within ``--noise`` accuracy).

    python benchmarks/oneshot_search.py [--seeds 0 1 2] [--trials 16] [--out runs/oneshot]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from adderize import log_to_stdout
from adderize.kernels.machine import describe
from adderize.search import SearchSettings, search
from adderize.train.recipe import Recipe

QUICK = ["model.name=resnet10t", "data.input_size=16", "teacher.epochs=4"]


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def matched(front: list[dict[str, Any]], other: list[dict[str, Any]], noise: float) -> int:
    """Points of ``front`` that ``other`` matches: equal or lower energy, accuracy within
    ``noise`` of it or better."""
    return sum(
        any(
            o["energy_ratio"] <= f["energy_ratio"] and o["accuracy"] >= f["accuracy"] - noise
            for o in other
        )
        for f in front
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--supernet-epochs", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--out", default="runs/oneshot")
    args = parser.parse_args()
    log_to_stdout()
    print(describe())
    table = []
    for seed in args.seeds:
        base = Path(args.out) / f"seed{seed}"
        multi_out, one_out = base / "multi", base / "oneshot"
        recipe = Recipe().override([*QUICK, f"seed={seed}"])
        common = {"budget": args.budget, "trials": args.trials, "seed": seed}
        multi = SearchSettings(strategy="evolution", engine="sequential", population=8,
                               trial_epochs=args.trial_epochs, **common)  # fmt: skip
        tic = time.perf_counter()
        m = search(recipe, multi, multi_out)
        t_multi = time.perf_counter() - tic
        per_trial = [r["seconds"] for r in rows(multi_out) if r["trained"]]
        t_multi_search = sum(per_trial)
        one = SearchSettings(strategy="evolution", mode="oneshot", population=8,
                             supernet_epochs=args.supernet_epochs, **common)  # fmt: skip
        teacher = multi_out / "teacher.safetensors"
        tic = time.perf_counter()
        o = search(recipe.override([f"model.pretrained_file={teacher}"]), one, one_out)
        t_one = time.perf_counter() - tic
        fine_tune = t_multi_search / len(per_trial)
        covered = matched(m["front"], o["front"], args.noise)
        table.append((seed, t_multi, t_multi_search, t_one, fine_tune, m, o, covered))
    print(f"\nbudget {args.budget} of all-conv, {args.trials} candidates per search")
    print("| seed | multi-trial search | one-shot search | one fine-tune | one-shot / fine-tune "
          "| multi front (energy: acc) | one-shot front | multi points matched |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for seed, _, t_ms, t_one, ft, m, o, covered in table:
        mf = ", ".join(f"{p['energy_ratio']:.3f}: {p['accuracy']:.3f}" for p in m["front"])
        of = ", ".join(f"{p['energy_ratio']:.3f}: {p['accuracy']:.3f}" for p in o["front"])
        print(f"| {seed} | {t_ms:.0f} s | {t_one:.0f} s | {ft:.1f} s | {t_one / ft:.1f}x "
              f"| {mf} | {of} | {covered}/{len(m['front'])} |")  # fmt: skip
    print(
        f"\nmulti-trial search time: the candidates' fine-tunes (teacher and start-up "
        f"excluded); one-shot: the whole run after the teacher; noise {args.noise}"
    )


if __name__ == "__main__":
    main()
