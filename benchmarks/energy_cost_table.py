"""Energy of a layer assignment: precomputed cost table vs a full energy report, one run.

python benchmarks/energy_cost_table.py --model resnet50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm

import adderize
from adderize.energy import cost_table, energy_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=10_000)
    args = parser.parse_args()
    size = (1, 3, args.size, args.size)
    model = timm.create_model(args.model)
    start = time.perf_counter()
    costs = cost_table(model, size)
    build = time.perf_counter() - start
    rng = np.random.default_rng(0)
    choices = rng.integers(0, len(costs.ops), size=(args.samples, len(costs.layers)))
    start = time.perf_counter()
    for c in choices:
        costs.energy(c)
    per_sample = (time.perf_counter() - start) / args.samples
    named = {n: costs.ops[j] for n, j in zip(costs.layers, choices[0], strict=True)}
    mapping = adderize.OpMapping(
        default="conv", keep_first=False, keep_last=False, insert_norm=False, names=named
    )
    start = time.perf_counter()
    report = energy_report(adderize.adderize(model, mapping), size)
    full = time.perf_counter() - start
    assert abs(report.total_pj - costs.energy(choices[0])) <= 1e-9 * report.total_pj
    print(
        f"{args.model}: {len(costs.layers)} layers x {len(costs.ops)} ops; table built in "
        f"{build:.2f} s"
    )
    print(
        f"energy of one assignment: cost table {per_sample * 1e6:.1f} us, convert + report "
        f"{full * 1e3:.0f} ms ({full / per_sample:,.0f}x); same value"
    )


if __name__ == "__main__":
    main()
