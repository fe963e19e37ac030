"""The TVM side of the adder kernels, and nothing else: the target (this CPU), the TE
compute definitions (``compute``), the schedules per kind (``cpu``, ``int8``, ``cuda``),
building with per-machine selection and the kernel cache (``build``), and MetaSchedule
tuning (``tuning``). It imports nothing of :mod:`adderize.nn`, :mod:`adderize.kernels` or
:mod:`adderize.deploy`: the torch-facing kernels (:mod:`adderize.kernels`) and whole-model
deployment (:mod:`adderize.deploy`) read it, never the other way round.
"""

__all__: list[str] = []  # the modules are the API: adderize.tvm_schedules.build, ...
