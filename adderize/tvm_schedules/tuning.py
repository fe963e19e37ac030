"""MetaSchedule tuning of the adder kernels, on top of the candidate tiles measured at
first use: records go to a JSON database (:func:`tuning_dir`) that later builds of the same
kernel read (:func:`tuned_module`), in training and in whole-model compilation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adderize.tvm_schedules.kinds import Workload, computes
from adderize.tvm_schedules.target import cache_dir, llvm_target

__all__ = ["tune", "tuned", "tuned_module", "tuning_dir", "tuning_stamp"]


def tuning_dir() -> Path:
    """Where tuning records live (``$XDG_CACHE_HOME/adderize/tuning``)."""
    return cache_dir("tuning")


def tuning_stamp() -> str:
    """Changes whenever the tuning database does (part of the kernel cache key)."""
    records = tuning_dir() / "database_tuning_record.json"
    return f"{records.stat().st_mtime_ns}" if records.is_file() else "untuned"


def tuned(w: Workload) -> bool:
    """Whether the tuning database holds a schedule for kernel ``w``."""
    return tuned_module(w) is not None


def tuned_module(w: Workload) -> Any | None:
    """The best MetaSchedule schedule recorded for this kernel, if the database has one."""
    records = tuning_dir() / "database_tuning_record.json"
    if not records.is_file():
        return None
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(tuning_dir()))
    mod = tvm.IRModule({"main": te.create_prim_func(computes(w))})
    sch = database.query_schedule(mod, llvm_target(), workload_name="main")
    return None if sch is None else sch.mod


def _warm_builder() -> None:
    """Builder-worker initializer: pay TVM's slow tensor-intrinsic import once per worker
    (about 77 s here) instead of timing out every build."""
    import tvm.s_tir.tensor_intrin  # noqa: F401


def tune(
    w: Workload,
    *,
    trials: int = 64,
    timeout_sec: float = 60.0,
    runner: Any = "local",
    target: Any = None,
) -> Path:
    """Tune kernel ``w`` with MetaSchedule into the tuning database, which later builds of
    that kernel use (``~/.cache/adderize/tuning``; interrupted runs keep their records).

    ``runner`` is where candidates are measured:
    ``"local"`` (this machine) or a MetaSchedule runner, e.g. an ``ms.runner.RPCRunner`` for
    a board behind TVM's RPC tracker, with that board's ``target`` (a ``tvm.target.Target``;
    default: this CPU). Returns the database directory.
    """
    import importlib.util

    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    if importlib.util.find_spec("psutil") is None:
        raise RuntimeError("MetaSchedule tuning needs psutil: pip install 'adderize[tune]'")
    # xgboost's cost model guides the search; without it the search samples at random
    cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    work_dir = tuning_dir()
    work_dir.mkdir(parents=True, exist_ok=True)
    mod = tvm.IRModule({"main": te.create_prim_func(computes(w))})
    builder = ms.builder.LocalBuilder(
        max_workers=1, timeout_sec=timeout_sec, initializer=_warm_builder
    )
    ms.tir_integration.tune_tir(
        mod,
        llvm_target() if target is None else target,
        str(work_dir),
        max_trials_global=trials,
        num_trials_per_iter=min(trials, 16),
        builder=builder,
        runner=runner,
        cost_model=cost_model,
    )
    return work_dir
