"""The catalogue: a fresh Registry of the built-in methods and the `tbench.methods` plugins.

Kept apart from registry.py so the built-in method modules, which import the registry, are not
imported back by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

from .builtin import BUILTIN_METHODS
from .registry import Method, PluginError, Registry

ENTRY_POINT_GROUP = "tbench.methods"


def _as_methods(obj: object) -> list[Method]:
    if isinstance(obj, Method):
        return [obj]
    if callable(obj) and not isinstance(obj, Iterable):
        obj = obj()  # a factory returning a Method or several
        if isinstance(obj, Method):
            return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        items = list(obj)
        if items and all(isinstance(i, Method) for i in items):
            return items
    raise TypeError(f"expected a tbench Method or a list of them, got {type(obj).__name__}")


def load_registry(plugins: bool = True) -> Registry:
    """The built-in methods plus, if asked, every method from the `tbench.methods` entry points."""
    registry = Registry()
    for item in BUILTIN_METHODS:
        registry.add(item)
    if not plugins:
        return registry
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            for item in _as_methods(ep.load()):
                registry.add(item)
        except Exception as exc:  # a broken plugin must not take the CLI down with it
            registry.plugin_errors.append(PluginError(f"{ep.name} = {ep.value}", f"{type(exc).__name__}: {exc}"))
    return registry
