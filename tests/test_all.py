"""Every module of the package declares ``__all__``, and it is right: each name in it
exists, and each public function or class the module defines is in it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import adderize

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(adderize.__path__, "adderize.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_declared_and_complete(name):
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{name} declares no __all__"
    assert len(set(names)) == len(names), f"{name}.__all__ repeats a name"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
    defined = [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == name
    ]
    unlisted = [n for n in defined if n not in names]
    assert not unlisted, f"{name} defines public {unlisted} outside its __all__"
