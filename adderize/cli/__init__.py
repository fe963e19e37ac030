"""``adderize`` command line (also ``python -m adderize``): one module per command, each
with ``add_parser(subparsers)`` and ``run(args) -> exit status``; shared argument groups
and helpers in :mod:`adderize.cli._common`. What the user got wrong raises
:class:`adderize.AdderizeError` and exits 2 with its message; anything else is a bug and
keeps its traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adderize._errors import AdderizeError
from adderize.cli import compile, convert, demo, energy, finetune, run, search, tune

__all__ = ["build_parser", "main"]

COMMANDS = (convert, energy, tune, finetune, search, compile, run, demo)  # --help order


def build_parser() -> argparse.ArgumentParser:
    from adderize._version import __version__

    parser = argparse.ArgumentParser(
        prog="adderize", description="Turn timm/PyTorch CNNs into multiplication-free networks."
    )
    parser.add_argument("--version", action="version", version=f"adderize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error, as argparse)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # KEY=VALUE overrides may follow options (argparse keeps positionals contiguous)
        if extra and hasattr(args, "overrides") and all("=" in e and e[0] != "-" for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse's usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    from adderize._log import log_to_stdout

    log_to_stdout()
    try:
        return int(args.func(args))
    except (AdderizeError, FileNotFoundError) as e:
        print(f"adderize: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
