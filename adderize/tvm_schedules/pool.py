"""Run the TVM kernels' parallel loops on the process's OpenMP pool: torch's.

A TVM kernel library calls its parallel loops through a function pointer that the
library holds, ``__TVMBackendParallelLaunch``, set to TVM's own thread pool when the
library is loaded. torch's CPU ops run on OpenMP (libgomp in torch's wheels), whose
threads spin-wait after every op; a converted model alternates the two (a BatchNorm, then
an adder layer), so TVM's workers found torch's threads still spinning on the cores they
needed, and adder layers ran up to 2x slower unless libgomp's spin count was lowered
before torch was loaded (an import-order trap: ``import torch`` first is what every user
writes).

Here the pointer is set to a small launcher (:data:`LAUNCHER_C`, compiled once with the C
compiler TVM links its kernels with, into the kernel cache) that runs the kernel's tasks
in an OpenMP parallel region of the OpenMP runtime torch loaded, found in this process
(``GOMP_parallel``: libgomp, and LLVM's and Intel's runtimes, which export it too). The
threads that just ran torch's op run the adder kernel, spinning or not: no contention,
whatever the import order, with no environment variable, and torch's thread count
(``torch.set_num_threads``) is the kernels' too. Where the launcher cannot be built or no
OpenMP runtime is loaded, kernels keep TVM's pool (:func:`status` says which).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

from adderize.tvm_schedules.target import cache_dir

__all__ = ["LAUNCHER_C", "attach", "enabled", "status"]

_log = logging.getLogger(__name__)

#: the launcher: ``TVMBackendParallelLaunch``'s signature, the tasks run in one OpenMP
#: parallel region (each thread takes task ids thread, thread + team size, ...: a team
#: smaller than asked for still runs every task); OpenMP entry points are passed in at run
#: time (no link-time OpenMP library: the one torch loaded is the one used)
LAUNCHER_C = r"""
#include <stdint.h>
typedef struct { void* sync_handle; int32_t num_task; } Env;
typedef int (*Lambda)(int task_id, Env* env, void* cdata);
typedef void (*Parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
typedef int (*IntFn)(void);
static Parallel gomp_parallel;
static IntFn thread_num, num_threads, max_threads;
void adderize_set_omp(void* parallel, void* tnum, void* nthreads, void* maxthreads) {
  gomp_parallel = (Parallel)parallel; thread_num = (IntFn)tnum;
  num_threads = (IntFn)nthreads; max_threads = (IntFn)maxthreads;
}
typedef struct { Lambda f; void* cdata; int n; volatile int rc; } Ctx;
static void run(void* data) {
  Ctx* c = (Ctx*)data;
  Env env = {0, c->n};
  int step = num_threads();
  for (int t = thread_num(); t < c->n; t += step) {
    int r = c->f(t, &env, c->cdata);
    if (r != 0) c->rc = r;
  }
}
int adderize_parallel_launch(Lambda f, void* cdata, int num_task) {
  int n = num_task > 0 ? num_task : max_threads();
  if (n <= 1) { Env env = {0, 1}; return f(0, &env, cdata); }
  Ctx c = {f, cdata, n, 0};
  gomp_parallel(run, &c, (unsigned)n, 0);
  return c.rc;
}
"""
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _openmp_runtime() -> str | None:
    """The path of the OpenMP runtime loaded in this process (torch's), if any."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libomp", "libiomp5")) and ".so" in name:
            return path
    return None


def _build() -> ctypes.CDLL:
    digest = hashlib.sha256(LAUNCHER_C.encode()).hexdigest()[:16]
    path = cache_dir("kernels") / f"omp_launch-{digest}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler (cc) found")
        src = path.with_name(f"{path.stem}.{os.getpid()}.c")
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.so")
        src.write_text(LAUNCHER_C)
        try:
            subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            tmp.replace(path)
        finally:
            src.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    return ctypes.CDLL(str(path))


def _launcher() -> int | None:
    """The launcher's address, set up once (None where it cannot be)."""
    with _LOCK:
        if "address" in _STATE:
            return _STATE["address"]  # type: ignore[return-value]
        address = None
        if os.environ.get("ADDERIZE_TVM_POOL") == "tvm":
            _STATE["status"] = "TVM's thread pool (ADDERIZE_TVM_POOL=tvm)"
        elif (runtime := _openmp_runtime()) is None:
            _STATE["status"] = "TVM's thread pool (no OpenMP runtime loaded)"
        else:
            try:
                omp = ctypes.CDLL(runtime)
                lib = _build()
                lib.adderize_set_omp(
                    *(
                        ctypes.cast(getattr(omp, f), ctypes.c_void_p)
                        for f in (
                            "GOMP_parallel",
                            "omp_get_thread_num",
                            "omp_get_num_threads",
                            "omp_get_max_threads",
                        )
                    )
                )
                _STATE["lib"] = lib  # keep it loaded
                address = ctypes.cast(lib.adderize_parallel_launch, ctypes.c_void_p).value
                _STATE["status"] = f"the OpenMP pool of {os.path.basename(runtime)}"
            except Exception as e:  # no compiler, an odd runtime: TVM's pool
                _log.warning("adder kernels keep TVM's thread pool: %s", e)
                _STATE["status"] = f"TVM's thread pool ({type(e).__name__}: {e})"
        _STATE["address"] = address
        return address


def enabled() -> bool:
    """Whether kernels run their parallel loops on the process's OpenMP pool."""
    return _launcher() is not None


def status() -> str:
    """Which thread pool runs the kernels' parallel loops, in words."""
    _launcher()
    return str(_STATE["status"])


def attach(library: str | Path) -> bool:
    """Point the kernel library at ``library`` (loaded already, or loaded now) to the
    OpenMP launcher; False where it keeps TVM's pool (no launcher, or a library without
    parallel loops)."""
    address = _launcher()
    if address is None:
        return False
    lib = ctypes.CDLL(str(library))
    try:
        slot = ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch")
    except ValueError:  # no parallel loop in this kernel
        return False
    slot.value = address
    return True
