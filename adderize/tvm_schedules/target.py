"""What CPU this process runs on: printed by every benchmark, and part of the key under
which kernel choices measured on this machine are cached (a choice timed on one CPU can be
2x off on another).

``ADDERIZE_MAX_ISA=avx2`` caps the instruction set the kernels are built and chosen for at
AVX2 + FMA (no AVX-512, VNNI or AMX), as ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``ATEN_CPU_CAPABILITY=avx2`` cap torch's: with all three, an AVX-512 machine measures what
an AVX2 machine's code does (its cores' widths and caches stay its own)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ISA_FLAGS",
    "cache_dir",
    "cpu_arch",
    "cpu_isa",
    "cpu_model",
    "describe",
    "llvm_target",
    "max_isa",
]

#: ``ADDERIZE_MAX_ISA`` values: the :data:`ISA_FLAGS` each keeps
MAX_ISA = {"avx2": ("avx2", "fma")}

#: the instruction-set flags that change which kernel is fastest (x86 and ARM names)
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    for line in _cpuinfo():
        if line.startswith(("model name", "Model name")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def max_isa() -> str | None:
    """The ``ADDERIZE_MAX_ISA`` cap (module docstring), None where unset."""
    from adderize._errors import AdderizeError

    cap = os.environ.get("ADDERIZE_MAX_ISA", "").strip().lower() or None
    if cap is not None and cap not in MAX_ISA:
        raise AdderizeError(
            f"ADDERIZE_MAX_ISA={cap!r} is not a known cap; valid: {', '.join(MAX_ISA)} "
            f"(or unset: this CPU's own)"
        )
    return cap


@functools.cache
def cpu_isa() -> tuple[str, ...]:
    """The :data:`ISA_FLAGS` this CPU has, in that order (within ``ADDERIZE_MAX_ISA``)."""
    flags: set[str] = set()
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    cap = max_isa()
    return tuple(f for f in ISA_FLAGS if f in flags and (cap is None or f in MAX_ISA[cap]))


@functools.cache
def cpu_arch() -> str:
    """The core's microarchitecture as LLVM names it (``znver4``, ``sapphirerapids``): a
    model name such as "AMD EPYC" alone does not tell Zen 3 from Zen 5. Adds the
    ``/proc/cpuinfo`` family and model where it has them; "unknown" where neither is known.
    Imports TVM when it is installed."""
    parts = []
    try:
        from tvm.target import codegen

        parts.append(str(codegen.llvm_get_system_cpu()))
    except ImportError:
        pass
    fields: dict[str, str] = {}
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("cpu family") and fields.get("model"):
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    return ", ".join(parts) or "unknown"


def describe() -> str:
    """One line for a benchmark's header: CPU model and microarchitecture, ISA flags, torch
    threads."""
    isa = " ".join(cpu_isa()) or "no SIMD flags found"
    line = f"CPU: {cpu_model()} ({cpu_arch()}) [{isa}], {torch.get_num_threads()} torch threads"
    if max_isa() is not None:
        caps = [f"{k}={os.environ.get(k, 'unset')}" for k in TORCH_ISA_VARS]
        line += (
            f"; ADDERIZE_MAX_ISA={max_isa()}, torch's {', '.join(caps)} (ATen dispatches "
            f"{torch.backends.cpu.get_cpu_capability()})"
        )
    return line


#: the environment variables that cap torch's instruction set (oneDNN's, ATen's)
TORCH_ISA_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def cache_dir(*parts: str) -> Path:
    """adderize's cache on this machine: ``$XDG_CACHE_HOME/adderize`` (default
    ``~/.cache/adderize``), joined with ``parts``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root, "adderize", *parts)


@functools.cache
def llvm_target(contract: bool = False) -> Any:
    """TVM's LLVM target for this CPU (``mcpu`` as LLVM detects it, torch's thread count);
    ``contract``: let LLVM fuse a multiply and an add into an FMA (the ``fma`` kernel
    form). Imports TVM."""
    import tvm
    from tvm.target import codegen

    options: dict[str, Any] = {
        "kind": "llvm",
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": max(1, torch.get_num_threads()),
    }
    if max_isa() is not None:  # AVX-512 off takes its extensions with it
        options["mattr"] = ["-avx512f", "-avxvnni", "-amx-tile"]
    if contract:
        options["fast-math-contract"] = True
    return tvm.target.Target(options)
