"""Package exports imported on first use.

A package such as `scratchllm.data` exports names from modules that import torch; its option groups
(data/config.py) must import without it, for `scratchllm --help`. Importing a submodule runs its
package's __init__ first, so that __init__ names its exports here instead of importing them:

    lazy_exports(__name__, {"prepare": "scratchllm.data.prepare", ...})

`from scratchllm.data import prepare` then imports scratchllm.data.prepare when asked. A submodule
called like one of the exports (data's `prepare`) must not hide it: Python binds an imported
submodule to its package's attribute of that name, so the package's class keeps the export there.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package whose exports (name -> module) are imported on first access."""

    _exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__.get("_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_exports", {}):
            return  # `import scratchllm.data.prepare` must leave the function `prepare` exported
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._exports))


def lazy_exports(package: str, exports: dict[str, str]) -> None:
    """Make `package` (its __init__ calls this with __name__) import each export from its module on first use."""
    module = sys.modules[package]
    module.__class__ = LazyPackage
    module.__dict__["_exports"] = dict(exports)
