"""The methods tbench ships with, in the order `tbench list` shows them."""

from __future__ import annotations

from .exact import flash2, full, sdpa_cudnn, sdpa_efficient, sdpa_math, xformers_attention
from .flash3 import flash3, flash4
from .flex import flex
from .linear import LINEAR_METHODS
from .registry import Method
from .sage import sage
from .sparse import sliding_window_attention
from .tensorized import tensorized, tensorized_recompute, tensorized_ref, tensorized_sdpa, tensorized_triton

BUILTIN_METHODS: tuple[Method, ...] = (
    tensorized,
    tensorized_triton,
    tensorized_recompute,
    tensorized_ref,
    tensorized_sdpa,
    full,
    flash2,
    sdpa_cudnn,
    sdpa_efficient,
    xformers_attention,
    flex,
    flash3,
    flash4,
    sdpa_math,
    *LINEAR_METHODS,
    sliding_window_attention,
    sage,
)
