"""Adder kernels: TVM-generated (``tvm_l1``), memory-bounded PyTorch (``l1``), and the
independent plain-PyTorch definition the tests check both against (``reference``)."""

__all__: list[str] = []  # the modules are the API: adderize.kernels.tvm_l1, ...
