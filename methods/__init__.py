"""Attention methods: the registry (registry.py) and the built-in methods (exact.py, tensorized.py)."""

from .registry import Availability, Method, Registry, load_registry, method

__all__ = ["Availability", "Method", "Registry", "load_registry", "method"]
