"""`adderize convert`: convert a timm model and report every layer."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from adderize.cli._common import (
    add_model_source,
    mapping_arg,
    model_kwargs,
    output_path,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("convert", help="convert a timm model and report every layer")
    add_model_source(parser, saved=False)
    parser.add_argument(
        "--out",
        help="write the converted model here (safetensors format, whatever the suffix; no pickle)",
    )
    parser.add_argument("--report", action="store_true", help="print the per-layer table")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail if a layer the mapping asks to convert cannot be",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import adderize

    out = output_path(args.out, args.pretrained_file) if args.out else None
    model, report = adderize.create_model(
        args.model,
        mapping_arg(args.ops),
        keep=args.keep,
        pretrained_file=args.pretrained_file,
        strict=args.strict,
        return_report=True,
        **model_kwargs(args),
    )
    if args.json:
        print(report.to_json())
    elif args.report:
        print(report)
    else:
        print(report.summary())
    if out is not None:
        path = adderize.save(model, out)
        print(f"saved {path} (reload with adderize.load({str(path)!r}))", file=sys.stderr)
    return 0
