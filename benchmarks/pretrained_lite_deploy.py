"""Issue 30's deployment check: the label-free converted EfficientNet-Lite0 (all shift),
quantized for int8 where the int8 kernel covers a layer, compiled whole with TVM, against
torch's fp32 conv Lite0 at batch 1, 224 px; and its agreement on the 40 labelled views.

    python benchmarks/pretrained_lite_deploy.py [--photos 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import timm
import torch

sys.path.insert(0, os.path.dirname(__file__))
from pretrained_lite import views

from adderize import assets
from adderize.deploy import compile_model
from adderize.deploy.quant import quantize_model
from adderize.train.labelfree import convert_pretrained
from adderize.tvm_schedules.target import describe


def latency_ms(fn: object, x: torch.Tensor, reps: int = 20) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)  # type: ignore[operator]
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)  # type: ignore[operator]
            best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=16, help="unlabelled calibration photos")
    args = parser.parse_args()
    teacher = timm.create_model("tf_efficientnet_lite0")
    teacher.load_state_dict(assets.lite_state_dict("lite0"))
    teacher.eval()
    x, _ = views(teacher)
    student, _ = convert_pretrained(teacher, assets.natural_photos()[: args.photos], "shift")
    student.eval()
    int8, quant = quantize_model(student, [x[:8]])
    compiled, build = compile_model(int8, (1, 3, 224, 224))
    print(describe())
    print(quant.summary())
    print(build.summary())
    one = x[:1]
    conv, shift, built = (latency_ms(f, one) for f in (teacher, student, compiled))
    print(f"batch 1, 224 px: torch fp32 conv Lite0 {conv:.1f} ms, torch shift Lite0 "
          f"{shift:.1f} ms, compiled {built:.1f} ms ({built / conv:.2f}x fp32 conv)")  # fmt: skip
    with torch.no_grad():
        t, s = teacher(x), student(x)
        c = torch.cat([compiled(x[i : i + 1]) for i in range(len(x))])
    agree = lambda a, b: int((a.argmax(1) == b.argmax(1)).sum())  # noqa: E731
    print(f"top-1 agreement with the teacher on {len(x)} views: shift student {agree(s, t)}, "
          f"compiled {agree(c, t)}; compiled vs student {agree(c, s)}, max |difference| "
          f"{float((c - s).abs().max()):.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
