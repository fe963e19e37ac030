"""torch.export -> Relax -> shared library, with adder layers as adderize kernels."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adderize._errors import AdderizeError
from adderize.deploy.export import exportable
from adderize.deploy.relax_ops import CompileReport, Converters
from adderize.kernels import tvm_l1
from adderize.tvm_schedules.target import llvm_target

__all__ = [
    "CompileReport",
    "CompiledModel",
    "compile_model",
    "to_relax",
]

TARGETS = ("cpu", "cuda")


def _tvm_target(target: str) -> Any:
    import tvm

    if target not in TARGETS:
        raise AdderizeError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "cpu":
        return llvm_target()
    return tvm.target.Target({"kind": "cuda", "arch": "sm_80"})


def to_relax(model: nn.Module, example: torch.Tensor, target: str = "cpu") -> tuple[Any, Any]:
    """(Relax IRModule, CompileReport) of ``model`` at ``example``'s shape."""
    from tvm.relax.frontend.torch import from_exported_program

    report = CompileReport(target=target, input_size=tuple(example.shape))
    tic = time.perf_counter()
    program = torch.export.export(exportable(model), (example,))
    report.seconds["export"] = time.perf_counter() - tic
    conv = Converters(target, report)
    tic = time.perf_counter()
    mod = from_exported_program(
        program,
        custom_convert_map={
            "adder_conv2d.default": conv.conv2d,
            "adder_linear.default": conv.linear,
            "int8_adder_conv2d.default": conv.int8_conv2d,
            "binary_conv2d.default": conv.binary_conv2d,
            "conv2d.default": conv.dense_conv,
            "convolution.default": conv.dense_conv,
            "exp2.default": conv.exp2,
        },
        unwrap_unit_return_tuple=True,
    )
    report.seconds["import"] = time.perf_counter() - tic
    return mod, report


def compile_model(
    model: nn.Module,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    *,
    target: str = "cpu",
    out: str | Path | None = None,
    check: bool = True,
) -> tuple[CompiledModel | None, CompileReport]:
    """Compile ``model`` for ``target`` (``cpu``: this machine's LLVM; ``cuda``: sm_80,
    compile only without a GPU). ``out`` writes the shared library (plus a ``.json`` with
    the input shape and report). With ``check`` on CPU, the compiled model is run and
    compared with PyTorch (``report.max_abs_error``). Returns ``(CompiledModel or None for
    cuda, report)``."""
    import tvm

    if not tvm_l1.available():
        raise AdderizeError(
            f"compiling needs TVM, which is unavailable: {tvm_l1.unavailable_reason()}"
        )
    tvm_target = _tvm_target(target)
    model = model.eval()
    example = torch.randn(*input_size)
    mod, report = to_relax(model, example, target)
    tic = time.perf_counter()
    if target == "cuda":
        from tvm.s_tir import dlight

        with tvm_target:
            mod = tvm.relax.transform.LegalizeOps()(mod)
            mod = dlight.ApplyDefaultSchedule(
                dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                dlight.gpu.GeneralReduction(), dlight.gpu.Fallback(),
            )(mod)  # fmt: skip
    executable = tvm.compile(mod, target=tvm_target)
    report.seconds["build"] = time.perf_counter() - tic
    compiled = None
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(out))
        meta = {"input_size": list(input_size), "target": target, "report": report.__dict__}
        Path(f"{out}.json").write_text(json.dumps(meta, indent=1, default=str))
    if target == "cpu":
        compiled = CompiledModel(executable.jit(), tuple(input_size))
        if check:
            with torch.no_grad():
                expected = model(example)
            report.max_abs_error = float((compiled(example) - expected).abs().max())
    return compiled, report


class CompiledModel:
    """A compiled model in the Relax VM (CPU): ``compiled(x) -> torch.Tensor``."""

    def __init__(self, module: Any, input_size: tuple[int, ...]) -> None:
        import tvm
        from tvm import relax

        self.vm = relax.VirtualMachine(module, tvm.cpu())
        self.input_size = tuple(input_size)

    @classmethod
    def load(cls, path: str | Path) -> CompiledModel:
        """Load a library written by :func:`compile_model` (``out=``)."""
        import tvm

        path = Path(path)
        meta_path = Path(f"{path}.json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"{path} (and {meta_path.name} beside it) not found: write them with "
                "adderize compile MODEL --out PATH"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("target") != "cpu":
            raise AdderizeError(f"{path} was built for {meta.get('target')!r}; only cpu runs here")
        tvm_l1.available()  # sets TVM's thread-pool environment before its first import
        return cls(tvm.runtime.load_module(str(path)), tuple(meta["input_size"]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import tvm

        if tuple(x.shape) != self.input_size:
            raise AdderizeError(
                f"this library was compiled for input {self.input_size}, got {tuple(x.shape)}"
            )
        out = self.vm["main"](tvm.runtime.tensor(x.detach().float().contiguous().numpy()))
        return torch.from_numpy(out.numpy())

    def latency(self, repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per call on a random input (after ``warmup`` calls)."""
        x = torch.randn(*self.input_size)
        for _ in range(warmup):
            self(x)
        times = []
        for _ in range(repeat):
            tic = time.perf_counter()
            self(x)
            times.append(time.perf_counter() - tic)
        return times
