"""Availability checks shared by methods: is the package there, is there a suitable GPU."""

from __future__ import annotations

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
