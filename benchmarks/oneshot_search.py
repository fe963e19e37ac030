"""One-shot vs multi-trial operator search on digits, per seed, in one run.

For each seed the conv teacher is trained once (by the multi-trial run) and both searches
use it, with the same energy budget:

* multi-trial: regularized evolution, ``--trials`` candidates each fine-tuned for
  ``--trial-epochs`` (``adderize search --engine sequential``; the NNI engine adds process
  start-up);
* one-shot: NNI's ``RandomOneShot`` trains the weight-sharing supernet for
  ``--supernet-epochs``, NNI's ``RegularizedEvolution`` scores ``--oneshot-trials``
  sub-networks with its weights, under the default 3 energy caps
  (``adderize search --mode oneshot``).

Prints each search's time (teacher excluded) against one candidate fine-tune of the
multi-trial run, both Pareto fronts, how many points of the multi-trial front the one-shot
front matches (a point at equal or lower energy within ``--noise`` accuracy), and over all
seeds the mean accuracy gap at the multi-trial points' energies.

The two fronts' accuracies are not alike: the multi-trial's are single 2-epoch fine-tunes,
each the best of its search's noisy draws (two fine-tunes of one architecture from the
same teacher differ by up to 10 pt in this benchmark's output), the one-shot's are inherited
weights without training. So every architecture of both fronts is also fine-tuned again,
as the multi-trial search fine-tunes a candidate, with ``--refine-seeds`` fresh seeds
(outside both searches' times), and the fronts are compared again on the mean: which
search found the better architectures, each trained the same way.

    python benchmarks/oneshot_search.py [--seeds 0 1 2] [--trials 16] [--out runs/oneshot]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from adderize import log_to_stdout
from adderize.search import SearchSettings, search
from adderize.search.evaluate import Evaluator, evaluate_assignment
from adderize.train.recipe import Recipe
from adderize.tvm_schedules.target import describe

QUICK = ["model.name=resnet10t", "data.input_size=16", "teacher.epochs=4"]


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def gaps(front: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[float | None]:
    """For each point of ``front``: the best accuracy ``other`` reaches at equal or lower
    energy, minus the point's (None where ``other`` has nothing that low)."""
    out = []
    for f in front:
        below = [o["accuracy"] for o in other if o["energy_ratio"] <= f["energy_ratio"]]
        out.append(max(below) - f["accuracy"] if below else None)
    return out


def matched(front: list[dict[str, Any]], other: list[dict[str, Any]], noise: float) -> int:
    """Points of ``front`` that ``other`` matches: equal or lower energy, accuracy within
    ``noise`` of it or better."""
    return sum(g is not None and g >= -noise for g in gaps(front, other))


def gap_line(name: str, per_seed: list[list[float | None]], noise: float) -> str:
    found = [g for seed in per_seed for g in seed if g is not None]
    missing = sum(g is None for seed in per_seed for g in seed)
    if not found:
        return f"{name}: no multi-trial point has a one-shot point at equal or lower energy"
    mean = sum(found) / len(found)
    verdict = "within" if mean >= -noise else "outside"
    tail = f"; {missing} points with no one-shot point that low" if missing else ""
    return (f"{name}: one-shot minus multi-trial accuracy at each multi-trial point's energy "
            f"or lower, over {len(found)} points of {len(per_seed)} seeds: mean "
            f"{100 * mean:+.1f} pt ({verdict} the {100 * noise:.0f} pt noise), per point "
            f"{100 * min(found):+.1f} to {100 * max(found):+.1f} pt{tail}")  # fmt: skip


def refined(
    points: list[dict[str, Any]], recipe: Recipe, settings: SearchSettings, out: Path, seeds: int
) -> list[dict[str, Any]]:
    """``points`` with ``accuracy`` the mean of ``seeds`` fresh fine-tunes of each
    architecture (the multi-trial search's candidate training, seeds 1000, 1001, ...)."""
    accs: list[list[float]] = [[] for _ in points]
    for k in range(seeds):
        ev = Evaluator(out, recipe, replace(settings, seed=1000 + k))
        for i, p in enumerate(points):
            accs[i].append(evaluate_assignment(ev, p["assignment"], f"refine-{k}-{i}")["accuracy"])
    return [
        {**p, "accuracy": sum(a) / len(a), "runs": a} for p, a in zip(points, accs, strict=True)
    ]


def fmt(front: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['energy_ratio']:.3f}: {p['accuracy']:.3f}" for p in front)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=16, help="multi-trial candidates")
    parser.add_argument(
        "--oneshot-trials",
        type=int,
        default=24,
        help="sub-networks the one-shot search scores (about 0.25 s each)",
    )
    parser.add_argument("--refine-seeds", type=int, default=2)
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
        m = search(recipe, multi, multi_out)
        per_trial = [r["seconds"] for r in rows(multi_out) if r["trained"]]
        t_multi_search = sum(per_trial)
        one = SearchSettings(strategy="evolution", mode="oneshot", population=8,
                             supernet_epochs=args.supernet_epochs,
                             **{**common, "trials": args.oneshot_trials})  # fmt: skip
        teacher = multi_out / "teacher.safetensors"
        from_teacher = recipe.override([f"model.pretrained_file={teacher}"])
        tic = time.perf_counter()
        o = search(from_teacher, one, one_out)
        t_one = time.perf_counter() - tic
        fine_tune = t_multi_search / len(per_trial)
        covered = matched(m["front"], o["front"], args.noise)
        m_ref, o_ref = (
            refined(front, from_teacher, multi, base / f"refine-{name}", args.refine_seeds)
            for name, front in (("multi", m["front"]), ("oneshot", o["front"]))
        )
        covered_ref = matched(m_ref, o_ref, args.noise)
        table.append((seed, t_multi_search, t_one, fine_tune, m, o, covered, m_ref, o_ref,
                      covered_ref))  # fmt: skip
        for name, front in (("multi-trial", m_ref), ("one-shot", o_ref)):
            print(f"seed {seed} {name} front fine-tuned again:")
            for p in front:
                runs = " ".join(f"{a:.3f}" for a in p["runs"])
                print(f"  {p['energy_ratio']:.3f}  {p['accuracy']:.4f} ({runs})  {p['trial']}")
    print(f"\nbudget {args.budget} of all-conv; multi-trial: {args.trials} candidates "
          f"fine-tuned; one-shot: {args.oneshot_trials} sub-networks scored with inherited "
          "weights")  # fmt: skip
    print("| seed | multi-trial search | one-shot search | one fine-tune | one-shot / fine-tune "
          "| multi front (energy: acc) | one-shot front | multi points matched |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for seed, t_ms, t_one, ft, m, o, covered, *_ in table:
        mf, of = fmt(m["front"]), fmt(o["front"])
        print(f"| {seed} | {t_ms:.0f} s | {t_one:.0f} s | {ft:.1f} s | {t_one / ft:.1f}x "
              f"| {mf} | {of} | {covered}/{len(m['front'])} |")  # fmt: skip
    print(f"\nthe same fronts, every architecture fine-tuned again with {args.refine_seeds} "
          "fresh seeds (mean accuracy)")  # fmt: skip
    print("| seed | multi front | one-shot front | multi points matched |")
    print("|---|---|---|---|")
    for seed, *_, m_ref, o_ref, covered_ref in table:
        print(f"| {seed} | {fmt(m_ref)} | {fmt(o_ref)} | {covered_ref}/{len(m_ref)} |")
    print()
    print(gap_line("as searched", [gaps(t[4]["front"], t[5]["front"]) for t in table], args.noise))
    print(gap_line("fine-tuned again", [gaps(t[7], t[8]) for t in table], args.noise))
    print(
        f"\nmulti-trial search time: the candidates' fine-tunes (teacher and start-up "
        f"excluded); one-shot: the whole run after the teacher; noise {args.noise}"
    )


if __name__ == "__main__":
    main()
