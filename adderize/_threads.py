"""OpenMP settings that must be made before torch is imported.

torch's CPU ops run on GNU OpenMP (libgomp), whose idle threads spin-wait 300,000 times
after each parallel region before they sleep; the TVM adder kernels run on TVM's own
thread pool. A converted model alternates the two (a BatchNorm, then an adder layer), so
TVM's workers find torch's threads still spinning on the cores they need: on 2 cores a
3x3 adder layer at batch 1 ran 2.0x slower, 128->256 s2 @28 2.0 ms instead of 1.0 ms,
and oneDNN's conv gained nothing from the long spin (0.60 ms either way; AMD EPYC Zen 4,
see docs/kernels.md, "Thread pools").

libgomp reads ``GOMP_SPINCOUNT`` once, when torch loads it, so this module (imported first
by ``adderize/__init__``) sets it to :data:`SPIN_COUNT` while torch is not yet imported
and the user has set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``. When torch came
first, :func:`advise` says once, in the log, how to get the setting.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["SPIN_COUNT", "advise", "spin_set_by_adderize"]

log = logging.getLogger(__name__)

#: spins of an idle libgomp thread before it sleeps (libgomp's default: 300,000)
SPIN_COUNT = "1000"

_USER_SET = any(v in os.environ for v in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))
_TOO_LATE = "torch" in sys.modules and not _USER_SET
_SET = "torch" not in sys.modules and not _USER_SET
if _SET:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
_ADVISED: list[bool] = []


def spin_set_by_adderize() -> bool:
    """Whether importing adderize set ``GOMP_SPINCOUNT`` for this process."""
    return _SET


def advise() -> None:
    """Log once, at the first TVM kernel, that torch was imported before adderize with
    libgomp's default spin (so adder layers may run up to 2x slower) and how to fix it."""
    if not _TOO_LATE or _ADVISED:
        return
    _ADVISED.append(True)
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        return
    log.warning(
        "torch was imported before adderize, so torch's OpenMP threads spin-wait 300,000 "
        "times after each op and take the cores the TVM adder kernels need (up to 2x "
        "slower adder layers): import adderize before torch, or start Python with "
        f"GOMP_SPINCOUNT={SPIN_COUNT} in the environment"
    )
