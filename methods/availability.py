"""Availability checks shared by methods: is the package there, is there a suitable GPU."""

from __future__ import annotations

import importlib
import importlib.util

import torch

from .registry import Availability


def cuda_availability(device: str, provenance: str, min_capability: tuple[int, int] = (8, 0)) -> Availability:
    if device != "cuda":
        return Availability(False, reason=f"needs a CUDA GPU, device is {device}")
    if not torch.cuda.is_available():
        return Availability(False, reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    capability = torch.cuda.get_device_capability()
    if capability < min_capability:
        need = ".".join(map(str, min_capability))
        have = ".".join(map(str, capability))
        return Availability(False, reason=f"needs compute capability >= {need}, GPU has {have}")
    return Availability(True, provenance=provenance)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_problem(module: str, missing: str) -> Availability | None:
    """Why an optional package's `module` cannot be used (`missing` when its top-level package is
    not installed; the import's own error when it fails), or None when it imports."""
    if not has_module(module.split(".", 1)[0]):
        return Availability(False, reason=missing)
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install raises anything (OSError for a missing CUDA library)
        return Availability(False, reason=f"{module} failed to import: {type(exc).__name__}: {exc}")
    return None
