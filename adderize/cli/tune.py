"""`adderize tune`: tune a model's adder kernels with MetaSchedule."""

from __future__ import annotations

import argparse
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    NON_NEGATIVE,
    POSITIVE_INT,
    add_input_size,
    add_model_source,
    input_size,
    model_for,
    tune_kernels,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tune",
        help="tune a model's adder kernels with MetaSchedule "
        "(needs the 'tune' extra); later runs reuse the records",
    )
    add_model_source(parser)
    add_input_size(parser)
    parser.add_argument(
        "--train", action="store_true", help="also tune the backward kernels (a training step)"
    )
    parser.add_argument(
        "--trials", type=POSITIVE_INT, default=64, help="MetaSchedule trials per kernel"
    )
    parser.add_argument("--minutes", type=NON_NEGATIVE, help="stop starting new kernels after this")
    parser.add_argument("--retune", action="store_true", help="tune kernels already tuned")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from adderize.kernels import tvm_l1

    if not tvm_l1.available():
        raise AdderizeError(
            f"tuning needs TVM, which is unavailable: {tvm_l1.unavailable_reason()}"
        )
    size = input_size(args.input_size)
    if args.train and size[0] < 2:
        raise AdderizeError(
            f"--train runs a training step: BatchNorm needs a batch of at least "
            f"2, got --input-size {','.join(map(str, size))}"
        )
    model = model_for(args)
    x = torch.randn(*size)

    def run() -> None:
        if args.train:
            model.train()
            model(x).float().sum().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    tune_kernels(
        run,
        args.trials,
        args.minutes,
        args.retune,
        what=(f"{'forward + backward' if args.train else 'forward'}, input {size}"),
    )
    return 0
