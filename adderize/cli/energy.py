"""`adderize energy`: op counts and energy per layer, against the all-conv model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from adderize.cli._common import (
    POSITIVE_INT,
    add_input_size,
    add_model_source,
    input_size,
    model_for,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("energy", help="op counts and energy per layer, vs all-conv")
    add_model_source(parser)
    parser.add_argument(
        "--bits",
        default="32",
        help="8, 16, 32 (int8, fp16, fp32) or a precision name: fp32, fp16, int32, int8",
    )
    add_input_size(parser)
    parser.add_argument("--table", help="energy table YAML (default: Horowitz 45 nm)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", help="write a PNG of per-layer energy here")
    parser.add_argument(
        "--rows", type=POSITIVE_INT, default=None, help="print at most this many rows"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adderize.energy import energy_report

    model = model_for(args)
    bits = int(args.bits) if args.bits.isdigit() else args.bits
    report = energy_report(model, input_size(args.input_size), table=args.table, bits=bits)
    if args.json:
        print(report.to_json())
    else:
        print(report.table_str(max_rows=args.rows))
        print()
        print(report.summary())
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}", file=sys.stderr)
    return 0
