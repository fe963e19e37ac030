"""`adderize run`: run a compiled library in the Relax VM and time it."""

from __future__ import annotations

import argparse
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    POSITIVE_INT,
    input_size,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("run", help="run a compiled library in the Relax VM and time it")
    parser.add_argument("library", help="a .so written by adderize compile")
    parser.add_argument("--input-size", help="check the compiled input size: 224 or N,C,H,W")
    parser.add_argument("--repeat", type=POSITIVE_INT, default=20)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import statistics

    from adderize.deploy import CompiledModel

    compiled = CompiledModel.load(args.library)
    if args.input_size is not None and input_size(args.input_size) != compiled.input_size:
        raise AdderizeError(
            f"{args.library} was compiled for input {compiled.input_size}, not "
            f"{input_size(args.input_size)}: recompile with adderize compile --input-size"
        )
    times = compiled.latency(repeat=args.repeat)
    print(
        f"{args.library}: input {compiled.input_size}, {args.repeat} runs: median "
        f"{statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms"
    )
    return 0
