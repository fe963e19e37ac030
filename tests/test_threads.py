"""The OpenMP spin setting made at import (adderize._threads): set when adderize comes
before torch, left alone when the user chose one, and advised once when torch came first."""

from __future__ import annotations

import os
import subprocess
import sys

from adderize import _threads


def _python(code: str, **env: str) -> str:
    """stdout + stderr of ``python -c code`` in a fresh process, without any OpenMP spin
    setting of this one, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


SPIN = "import os; print('spin', os.environ.get('GOMP_SPINCOUNT'))"


def test_importing_adderize_first_sets_the_openmp_spin():
    out = _python(f"import adderize, torch; {SPIN}")
    assert f"spin {_threads.SPIN_COUNT}" in out


def test_a_spin_the_user_chose_is_kept():
    assert "spin 77" in _python(f"import adderize; {SPIN}", GOMP_SPINCOUNT="77")
    assert "spin None" in _python(f"import adderize; {SPIN}", OMP_WAIT_POLICY="passive")


def test_torch_imported_first_is_told_how_to_get_the_spin_setting():
    code = (
        "import logging, torch, adderize; logging.basicConfig();"
        "from adderize import _threads; _threads.advise(); _threads.advise();"
        f"{SPIN}"
    )
    out = _python(code)
    assert "spin None" in out  # too late: libgomp has read its environment
    assert out.count("import adderize before torch") == 1  # said once
    assert f"GOMP_SPINCOUNT={_threads.SPIN_COUNT}" in out
