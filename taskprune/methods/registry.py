"""The one list of compression methods (config validation, CLI help and the README table read it).

Every module in ``taskprune/methods`` is imported once, on first use; its ``@register`` class
becomes a method. Plug-ins outside the package: modules named in ``$TASKPRUNE_PLUGINS``
(comma-separated) or in the ``taskprune.methods`` entry-point group are imported the same way.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points

from taskprune.methods.base import Method

PLUGINS_ENV = "TASKPRUNE_PLUGINS"
_NOT_METHODS = {"base", "registry", "masking", "catalogue"}  # modules of this package that define no method
_METHODS: dict[str, Method] = {}
_loaded: set[str] = set()


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` (a ``Method`` subclass with a ``name``) a method."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__}: a method needs a name")
    if cls.name in _METHODS and type(_METHODS[cls.name]) is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice ({type(_METHODS[cls.name]).__module__}, "
                         f"{cls.__module__})")
    _METHODS[cls.name] = cls()
    return cls


def _import(module: str) -> None:
    if module not in _loaded:
        importlib.import_module(module)
        _loaded.add(module)


def _discover() -> None:
    package = importlib.import_module("taskprune.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_METHODS:
            _import(f"taskprune.methods.{info.name}")
    for point in entry_points(group="taskprune.methods"):
        _import(point.value.partition(":")[0])
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        _import(module)


def method_names() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(sorted(_METHODS))}") from None


def method_module(name: str) -> str:
    """The module that defines method ``name`` (its code is part of what a stage depends on)."""
    return type(get_method(name)).__module__

