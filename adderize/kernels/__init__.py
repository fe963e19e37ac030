"""Adder kernels: TVM-generated (``tvm_l1``), memory-bounded PyTorch (``l1``), and the
independent plain-PyTorch definition the tests check both against (``reference``)."""
