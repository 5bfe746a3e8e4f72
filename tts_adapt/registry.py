"""Named registries of small classes (model backends, adaptation strategies), as peft registers tuners."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> class``; registering a name twice is an error, an unknown name lists the valid ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls: T) -> T:
        """Class decorator: register ``cls`` under ``cls.name``."""
        if cls.name in self:
            raise ValueError(f"a {self.kind} named {cls.name!r} is already registered")
        self[cls.name] = cls
        return cls

    def get_class(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self)}") from None


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` importing ``name`` from ``package.<exports[name]>`` on first use
    (keeps package imports cheap: the CLI reads configs without importing PyTorch)."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
