"""Record the adder kernels (kind, shape, l_p) that real models use in training and inference,
for the candidate checks of ``tests/test_kernel_select.py``.

Converts each model to adder, runs a forward and backward (training) and a forward
(inference) at each size and batch, and writes the sorted, de-duplicated kernel list to
``tests/data/model_workloads.json``. Builds each kernel once (first candidate only)::

    ADDERIZE_KERNEL_SELECT=first python tools/model_workloads.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch

import adderize
from adderize.tvm_schedules import build as tvm_build
from adderize.tvm_schedules.kinds import Workload

MODELS = ("mobilenetv2_100", "mobilenetv3_small_100", "efficientnet_b0", "resnet18")
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "model_workloads.json"


def record(name: str, size: int, batch: int) -> list[Workload]:
    model = adderize.adderize(timm.create_model(name, num_classes=10))
    x = torch.randn(batch, 3, size, size)

    def run() -> None:
        model.train()
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            model(x[:1])

    return tvm_build.workloads(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    found: set[Workload] = set()
    for name in args.models:
        for size in args.sizes:
            kernels = record(name, size, args.batch)
            print(f"{name} @{size}: {len(kernels)} kernels", flush=True)
            found.update(kernels)
    rows = sorted([w.kind, list(w.shape), w.lp] for w in found)  # Workload(*row) reads it
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"models": args.models, "sizes": args.sizes,
                               "batch": args.batch, "kernels": rows}, indent=0))  # fmt: skip
    print(f"{len(rows)} distinct kernels -> {OUT}")


if __name__ == "__main__":
    main()
