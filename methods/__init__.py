"""Attention methods: the registry (registry.py), the built-in methods (exact.py, tensorized.py, ...)
and the catalogue that loads them with the plugins (catalog.py)."""

from .registry import Availability, Method, Registry, method

__all__ = ["Availability", "Method", "Registry", "method"]
