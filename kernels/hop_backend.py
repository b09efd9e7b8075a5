"""The libraries a hop of tensorized attention can run on (a module without Triton, so that the
method registry can name them without loading a kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class HopBackend(Enum):
    TRITON = "Triton"
    FA3 = "FlashAttention-3"
    CUDNN = "cuDNN SDPA"


class PackedBackward(Enum):
    """How the fused Triton backward launches its packed kernel (hops of slices of at most 64)."""

    TABLE = "one stage, pointer loads"  # the table's tile (kernels/tensorized_backward.packed_tile)
    STAGED_BOXES = "two pipeline stages, TMA boxes"  # the same rows and warps, the next tile's loads in flight


def all_triton(backends: Sequence[HopBackend]) -> bool:
    return all(b is HopBackend.TRITON for b in backends)


@dataclass(frozen=True)
class TrainChain:
    """How a training step of tensorized attention runs. Hop t's forward runs on `forward[t]`. With
    `fused_backward`, the backward is the fused Triton chain's (float32 dq and dk sums across the
    hops), from the outputs and log-sum-exps those forwards saved; else each hop's backward runs on
    its forward's backend, as its own differentiable op, and autograd adds the hops' dq and dk shares.
    `packed_backward[t]` says how the fused backward launches its packed kernel on hop t (empty: the
    table's tile on every hop; a hop of slices longer than the packed kernel's ignores it)."""

    forward: tuple[HopBackend, ...]
    fused_backward: bool
    packed_backward: tuple[PackedBackward, ...] = ()

    @classmethod
    def triton(cls, hops: int) -> TrainChain:
        """The fused Triton chain, forward and backward."""
        return cls((HopBackend.TRITON,) * hops, True)

    @property
    def all_triton(self) -> bool:
        return self.fused_backward and all_triton(self.forward)

    @property
    def staged_hops(self) -> tuple[int, ...]:
        """The hops (0-based, the forward's order) whose packed backward runs in two stages with boxes."""
        return tuple(t for t, form in enumerate(self.packed_backward) if form is PackedBackward.STAGED_BOXES)

    @property
    def is_table_chain(self) -> bool:
        """The fused Triton chain with the table's launch shapes: what `tensorized-triton` runs."""
        return self.all_triton and not self.staged_hops
