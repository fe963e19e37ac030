"""Building, selecting and caching the TVM adder kernels on this machine.

A kernel is a :class:`~adderize.tvm_schedules.kinds.Workload`. At first use it is built
with the schedule MetaSchedule tuning recorded, if any; else the register tiles of
:func:`adderize.tvm_schedules.kinds.candidates` are each built (a few ms)
and timed on random data of the kernel's shapes, and the fastest is kept: a new CPU gets
kernels fitted to its vector registers and ports without a tuning run. Set
``ADDERIZE_KERNEL_SELECT=first`` to skip the timing and take the first candidate (the
best guess; the test suite does, to compile faster).

The chosen kernel is kept in memory and in a disk cache (``$XDG_CACHE_HOME/adderize/
kernels``) keyed by kernel version, shape, target (LLVM's CPU name), TVM version, tuning
database and selection mode; :func:`chosen` says which tile won.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adderize._errors import AdderizeError
from adderize.tvm_schedules import pool, tuning
from adderize.tvm_schedules.compute import FMA_FORMS
from adderize.tvm_schedules.cpu import Variant
from adderize.tvm_schedules.kinds import Workload, candidates, schedule
from adderize.tvm_schedules.target import cache_dir, llvm_target
from adderize.tvm_schedules.tuning import tuned_module, tuning_stamp

__all__ = [
    "KERNEL_VERSION",
    "SELECT_MODES",
    "available",
    "build",
    "chosen",
    "fastest",
    "forget",
    "kernel",
    "select_mode",
    "tune",
    "unavailable_reason",
    "variant",
    "workloads",
]

KERNEL_VERSION = 14  # 13: channels_fma (depthwise); 14: the one-position forward's partial sums
#: ``ADDERIZE_KERNEL_SELECT`` values: time the candidate tiles, or take the first
SELECT_MODES = ("measure", "first")
_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_KERNELS: dict[Workload, Callable[..., Any]] = {}
_CHOSEN: dict[Workload, str] = {}
_STATE: dict[str, Any] = {}


def available() -> bool:
    """Whether TVM can be imported (checked once; the import takes a few seconds).

    Before TVM's first import its thread pool is sized to torch's thread count, told not
    to pin threads (its default here is one pinned thread, which also slows torch down) and
    not to spin when idle (spinning workers slow the torch ops between adder layers);
    a process that imported TVM earlier keeps its own settings.
    """
    if "ok" not in _STATE:
        os.environ.setdefault("TVM_NUM_THREADS", str(max(1, torch.get_num_threads())))
        os.environ.setdefault("TVM_BIND_THREADS", "0")
        # idle workers block at once instead of spinning on the cores torch needs next
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        try:
            import tvm  # noqa: F401
            from tvm import s_tir, te  # noqa: F401

            _STATE["ok"] = True
        except Exception as e:  # ImportError, or a broken native library
            _STATE["ok"], _STATE["error"] = False, f"{type(e).__name__}: {e}"
    return bool(_STATE["ok"])


def unavailable_reason() -> str:
    available()
    return str(_STATE.get("error", ""))


def select_mode() -> str:
    """``ADDERIZE_KERNEL_SELECT`` (default ``measure``), checked against :data:`SELECT_MODES`."""
    mode = os.environ.get("ADDERIZE_KERNEL_SELECT", "measure")
    if mode not in SELECT_MODES:
        raise AdderizeError(
            f"ADDERIZE_KERNEL_SELECT={mode!r} is not a selection mode; valid: "
            f"{', '.join(SELECT_MODES)}"
        )
    return mode


def _path(w: Workload) -> Path:
    import tvm

    key = (w.name, *w.shape)  # as earlier releases keyed it: their cached kernels stay valid
    ident = (
        f"{key}-{KERNEL_VERSION}-{llvm_target()}-{tvm.__version__}-{tuning_stamp()}-{select_mode()}"
    )
    return cache_dir("kernels") / f"{key[0]}-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.so"


def _cache_intact(path: Path) -> bool:
    """Whether ``path`` is a complete cached kernel: its digest file matches its bytes.

    Loading a damaged shared library can kill the process (SIGBUS on a truncated file), so a
    file is only loaded when the digest written after it says it is whole.
    """
    digest = path.with_name(path.name + ".sha256")
    try:
        want = digest.read_text().strip()
        return hashlib.sha256(path.read_bytes()).hexdigest() == want
    except OSError:
        return False


def _cache_write(lib: Any, path: Path, label: str) -> None:
    """Export ``lib`` to ``path``, its schedule label, and then its digest, each through a
    temporary file renamed into place: concurrent writers and a writer killed midway leave
    a usable cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.so")
        lib.export_library(str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.replace(path)
        tmp_label = path.with_name(f"{path.name}.{os.getpid()}.tmp.variant")
        tmp_label.write_text(label)
        tmp_label.replace(path.with_name(path.name + ".variant"))
        tmp_digest = path.with_name(f"{path.name}.{os.getpid()}.tmp.sha256")
        tmp_digest.write_text(digest)
        tmp_digest.replace(path.with_name(path.name + ".sha256"))
    except OSError:  # read-only home: keep the in-memory kernel
        pass


def kernel(w: Workload) -> Callable[..., Any]:
    """The compiled kernel ``w``: from memory, the disk cache, or built (and selected)
    now."""
    key = w
    recording = _STATE.get("recording")
    if recording is not None and w.spec.tuned:
        recording.setdefault(key, None)
    fn = _KERNELS.get(key)
    if fn is not None:
        return fn
    with _LOCK:
        if key in _KERNELS:
            return _KERNELS[key]
        if not available():
            raise RuntimeError(f"TVM kernels are unavailable: {unavailable_reason()}")
        import tvm

        path = _path(w)
        lib = None  # from the disk cache, where it is whole and still a candidate
        if _cache_intact(path):
            try:
                lib = tvm.runtime.load_module(str(path))
                label = path.with_name(path.name + ".variant")
                _CHOSEN[key] = label.read_text() if label.is_file() else "cached"
            except Exception:  # an incompatible cache entry: rebuild it
                lib = None
            if lib is not None and _stale(w, _CHOSEN[key]):
                lib = None
        on_disk = lib is not None
        if lib is None:
            lib, _CHOSEN[key] = build(w)
            _cache_write(lib, path, _CHOSEN[key])
            if pool.enabled() and _cache_intact(path):  # the exported library: its
                lib, on_disk = tvm.runtime.load_module(str(path)), True  # launcher can be
        if on_disk:  # repointed: parallel loops on torch's OpenMP pool (tvm_schedules.pool)
            pool.attach(path)
        fn = _bind(lib["main"], _CHOSEN[key])
        _KERNELS[key] = fn
        return fn


def _stale(w: Workload, label: str) -> bool:
    """Whether a cached kernel's recorded tile is no longer among its candidates (the
    candidate rules changed since it was selected): it is then selected again."""
    if not w.spec.selectable or label in ("tuned", "cached"):
        return False
    return label not in {str(c) for c in candidates(w)}


def _bind(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    """``fn`` with the callers' signature: an FMA-form kernel takes the input ``one``
    (a tensor holding 1.0) before its output, bound here."""
    if label.rsplit("/", 1)[-1] not in FMA_FORMS:
        return fn
    one = torch.ones(1)
    return lambda x, w, *rest: fn(x, w, one, *rest)


def forget(w: Workload | None = None) -> None:
    """Drop the in-memory kernel ``w`` (after tuning changed its schedule), or every one
    (``None``; the disk cache stays)."""
    if w is None:
        _KERNELS.clear()
        _CHOSEN.clear()
    else:
        _KERNELS.pop(w, None)
        _CHOSEN.pop(w, None)


def tune(w: Workload, **kwargs: Any) -> Path:
    """Tune kernel ``w`` with MetaSchedule (:func:`adderize.tvm_schedules.tuning.tune`,
    same arguments) and drop its in-memory build: its next use builds the tuned schedule.
    Returns the tuning database's folder."""
    work_dir = tuning.tune(w, **kwargs)
    forget(w)
    return work_dir


def chosen(w: Workload) -> str | None:
    """Which schedule kernel ``w`` of this process uses: ``"tuned"``, a register tile
    (e.g. ``"7x16/cols-outer"``), ``"fixed"`` (binary, transposes), or None if it was not
    built yet."""
    return _CHOSEN.get(w)


def _random_args(mod: Any) -> list[Any]:
    """Arguments for timing a built kernel: random tensors of its buffer shapes and dtypes
    (outputs included; floats normal, integers uniform over 0..255) and 1.5 for a scalar
    (``p`` of the l_p kernels)."""
    func = mod["main"]
    args: list[Any] = []
    gen = torch.Generator().manual_seed(0)
    for param in func.params:
        shape = getattr(param, "shape", None)  # tensor parameters carry their shape
        if shape is None:
            args.append(1.5)
            continue
        size, dtype = [int(d) for d in shape], getattr(torch, str(param.dtype))
        if dtype.is_floating_point:
            args.append(torch.randn(size, generator=gen, dtype=dtype))
        else:
            args.append(torch.randint(0, 256, size, generator=gen, dtype=dtype))
    return args


#: each contender's calls per round add up to about this many seconds (at most 20 calls)
ROUND_SECONDS = 0.005


def _timed(fn: Callable[..., Any], args: list[Any], calls: int = 1) -> float:
    """The fastest of ``calls`` calls of ``fn(*args)``, in seconds."""
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def fastest(fns: list[Callable[..., Any]], args: list[Any], rounds: int = 3) -> int:
    """Index of the fastest of ``fns`` on ``args``: each is called once to warm up and once
    timed; those within 1.5x of the best are then timed in alternation for ``rounds - 1``
    more rounds, so a burst of load on a shared machine hits every contender. Min time; a
    round calls a short kernel several times (:data:`ROUND_SECONDS`): with one call per
    round, a 1 ms depthwise kernel's choice was 13% off the fastest candidate."""
    for fn in fns:
        fn(*args)
    best = [_timed(fn, args) for fn in fns]
    contenders = [i for i, t in enumerate(best) if t <= 1.5 * min(best)]
    calls = max(1, min(20, int(ROUND_SECONDS / max(min(best), 1e-9))))
    for _ in range(rounds - 1):
        for i in contenders:
            best[i] = min(best[i], _timed(fns[i], args, calls))
    return min(contenders, key=best.__getitem__)


def build(w: Workload) -> tuple[Any, str]:
    """Compile kernel ``w``; returns ``(library, schedule label)``: the tuned
    schedule when the tuning database has one, else the fastest candidate tile on this
    machine (the first one in ``first`` mode)."""
    import tvm

    target = llvm_target()
    mod = tuned_module(w)
    if mod is not None:
        return tvm.compile(mod, target=target), "tuned"
    if not w.spec.selectable:
        return tvm.compile(schedule(w), target=target), "fixed"
    options = candidates(w)
    first = select_mode() == "first" or len(options) == 1
    built: list[tuple[Variant, Any, Any]] = []  # (tile, scheduled module, library)
    errors: list[str] = []
    for option in options:
        try:  # a tile that cannot take this shape is left out, never raised at the user
            mod = schedule(w, variant=option)
            built.append((option, mod, _compile(mod, option)))
        except Exception as e:
            errors.append(f"{option}: {type(e).__name__}: {e}")
            _log.debug("kernel %s: candidate %s left out (%s)", w, option, e)
            continue
        if first:
            break
    if not built:
        raise RuntimeError(
            f"no candidate schedule of kernel {w} builds: " + "; ".join(errors)[:2000]
        )
    if len(built) == 1:
        return built[0][2], str(built[0][0])
    # timed at the kernel's own shape: a smaller batch ranks the loop orders differently
    # (1x1 convs: 2x apart at batch 32, equal at batch 1)
    fns = [_bind(lib["main"], str(option)) for option, _, lib in built]
    plain = [mod for option, mod, _ in built if option.form not in FMA_FORMS]
    args = _random_args(plain[0]) if plain else _random_args(built[0][1])
    if not plain:  # an FMA form's own input ``one`` (third) is bound by _bind
        del args[2]
    pick = fastest(fns, args)
    return built[pick][2], str(built[pick][0])


def _compile(mod: Any, option: Variant) -> Any:
    import tvm

    return tvm.compile(mod, target=llvm_target(contract=option.form in FMA_FORMS))


def variant(w: Workload) -> Variant | None:
    """The register tile kernel ``w`` uses on this machine (selecting it now if needed);
    None for tuned and fixed schedules. Whole-model compilation reads it."""
    kernel(w)
    if not w.spec.selectable:
        return None
    label = _CHOSEN.get(w)
    return next((c for c in candidates(w) if str(c) == label), None)


def workloads(run: Callable[[], Any]) -> list[Workload]:
    """The adder kernels that ``run()`` uses (the kinds that are tuning tasks), e.g. a
    forward and backward of a converted model, in first-use order: the tuning tasks of
    that model."""
    seen: dict[Workload, None] = {}
    _STATE["recording"] = seen
    try:
        run()
    finally:
        del _STATE["recording"]
    return list(seen)
