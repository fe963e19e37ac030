"""Where the library's progress messages go.

Library modules log through ``logging.getLogger(__name__)`` (epoch lines, conversion
summaries, search progress) and never print; an application decides where they appear.
The command line and the benchmark scripts call :func:`log_to_stdout`; a program that
uses the Python API configures ``logging`` as it likes (``logging.basicConfig(level=
logging.INFO)`` shows them on stderr).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["log_to_stdout"]


class _Stdout(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname}: {msg}"
            print(msg, file=sys.stdout, flush=True)
        except Exception:  # as logging.StreamHandler: a failing handler must not raise
            self.handleError(record)


def log_to_stdout(level: int = logging.INFO) -> None:
    """Show adderize's messages at ``level`` and above on standard output, one per line."""
    logger = logging.getLogger("adderize")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())
    logger.setLevel(level)
    logger.propagate = False  # not twice where the root logger is configured too
