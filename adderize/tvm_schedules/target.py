"""What CPU this process runs on: printed by every benchmark, and part of the key under
which kernel choices measured on this machine are cached (a choice timed on one CPU can be
2x off on another)."""

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
]

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


@functools.cache
def cpu_isa() -> tuple[str, ...]:
    """The :data:`ISA_FLAGS` this CPU has, in that order."""
    flags: set[str] = set()
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return tuple(f for f in ISA_FLAGS if f in flags)


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
    return f"CPU: {cpu_model()} ({cpu_arch()}) [{isa}], {torch.get_num_threads()} torch threads"


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
    if contract:
        options["fast-math-contract"] = True
    return tvm.target.Target(options)
