"""`adderize demo`: the whole pipeline on offline digits data."""

from __future__ import annotations

import argparse
from typing import Any

from adderize.cli._common import POSITIVE_INT

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="the whole pipeline on offline digits data: train conv, convert, distil, "
        "report energy, save",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (reused when rerun)")
    parser.add_argument(
        "--epochs", type=POSITIVE_INT, help="student epochs (default: the digits recipe)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="digits recipe overrides (as finetune)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adderize.demo import run_demo

    ok = run_demo(args.out, args.epochs, args.overrides, progress=not args.no_progress)
    return 0 if ok else 1
