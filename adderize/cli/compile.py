"""`adderize compile`: compile a converted model with TVM (Relax) into a library."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    COUNT,
    NON_NEGATIVE,
    add_input_size,
    add_model_source,
    input_size,
    model_for,
    output_path,
    tune_kernels,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "compile",
        help="compile a converted model with TVM (Relax) into a shared library",
    )
    add_model_source(parser)
    parser.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu: this machine (LLVM); cuda: sm_80 (compile only without a GPU)",
    )
    add_input_size(parser)
    parser.add_argument("--out", default="model.so", help="shared library to write")
    parser.add_argument(
        "--tune-trials",
        type=COUNT,
        default=0,
        help="MetaSchedule trials per adder kernel before compiling (0: none)",
    )
    parser.add_argument("--tune-minutes", type=NON_NEGATIVE, help="time budget for tuning")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="int8: adder layers quantized (one uint8 grid per layer) on the byte-SAD kernel "
        "(binary layers use the packed kernel either way)",
    )
    parser.add_argument(
        "--calibrate",
        metavar="INPUTS.npy",
        help="int8 calibration inputs, float [N, C, H, W] (default: random inputs)",
    )
    parser.add_argument(
        "--tolerance",
        type=NON_NEGATIVE,
        default=1e-3,
        help="max |TVM - PyTorch| accepted by the CPU check (int8: vs the int8 model)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from adderize.deploy import compile_model

    size = input_size(args.input_size)
    output_path(args.out, args.model)
    model = model_for(args).eval()
    if args.tune_trials:
        x = torch.randn(*size)

        def run() -> None:
            with torch.no_grad():
                model(x)

        tune_kernels(run, args.tune_trials, args.tune_minutes, False, f"forward, input {size}")
    if args.precision == "int8":
        from adderize.deploy.quant import quantize_model

        if args.target != "cpu":
            raise AdderizeError(f"--precision int8 compiles for --target cpu, not {args.target}")

        model, quant = quantize_model(model, _calibration_batches(args.calibrate, size))
        print(quant.summary())
    _, report = compile_model(model, size, target=args.target, out=args.out)
    print(report.summary())
    print(f"wrote {args.out} (run it with: adderize run {args.out})")
    if report.max_abs_error is not None and report.max_abs_error > args.tolerance:
        print(
            f"adderize: error: TVM output differs from PyTorch by {report.max_abs_error:.3g}"
            f" > --tolerance {args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


def _calibration_batches(path: str | None, size: tuple[int, ...]) -> list[Any]:
    """Inputs for int8 calibration: a ``.npy`` file of inputs [N, C, H, W] (loaded without
    pickle), in batches of 32; without one, 4 batches of 8 random normal inputs (fine for
    timing, not for accuracy)."""
    import numpy as np
    import torch

    if path is None:
        print("int8 calibration on random inputs: pass --calibrate INPUTS.npy for accuracy")
        return [torch.randn(8, *size[1:]) for _ in range(4)]
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AdderizeError(f"--calibrate {path}: not a readable .npy array ({e})") from e
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(size[1:]) or data.shape[0] < 1:
        raise AdderizeError(
            f"--calibrate {path}: inputs of shape (N, {', '.join(map(str, size[1:]))}) "
            f"expected (the --input-size), got {data.shape}"
        )
    if not np.issubdtype(data.dtype, np.floating):
        raise AdderizeError(f"--calibrate {path}: float inputs expected, got {data.dtype}")
    x = torch.from_numpy(data.astype(np.float32))
    return list(x.split(32))
