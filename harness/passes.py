"""What one timed call of a case runs, per mode: the forward, the backward alone, or both.

`bwd` times `out.backward(dO)` alone: before each sample, outside the timed region, `setup` runs
the forward on inputs that require gradients, building a fresh autograd graph for the backward to
consume (a graph is consumed by its backward). `fwd_bwd` times the forward and the backward in one
call, as a training step runs them. Gradients are dropped before each call, so every backward
writes fresh dq, dk and dv instead of adding to the last ones (an extra pass a training step does
not make).

The same steps serve layer and model scope (harness/scoped.py): there the inputs are hidden states
or token ids (an integer tensor gets no gradient), and the module's weights, given as `weights`,
receive gradients too, dropped like the inputs' before each call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.case import Case, Mode

# What a method (or a layer around it) computes on its inputs.
Forward = Callable[..., torch.Tensor]

# Seed of the output gradient dO the timed backward receives (the values do not change its cost).
GRAD_SEED = 1


@dataclass
class Step:
    """One call to time (`call`) and what must run before it, untimed (`setup`; None: nothing)."""

    call: Callable[[], object]
    setup: Callable[[], None] | None = None
    release: Callable[[], None] = field(default=lambda: None)  # drops what the last call left held

    def __call__(self) -> object:
        """The call with its setup, for untimed use (warm-up, settling, peak memory)."""
        if self.setup is not None:
            self.setup()
        return self.call()


def output_gradient(out: torch.Tensor, seed: int = GRAD_SEED) -> torch.Tensor:
    """A standard normal dO of the output's shape and dtype, drawn on the CPU for reproducibility."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.dtype).to(out.device)


def make_step(forward: Forward, inputs: tuple[torch.Tensor, ...], case: Case,
              weights: tuple[torch.Tensor, ...] = ()) -> Step:
    """The step the case's mode times, on `inputs` (already in the method's layout); `weights`:
    parameters that require gradients, whose gradients are dropped before each call."""
    if case.mode is Mode.FWD:
        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return forward(*inputs)

        return Step(fwd)

    # Leaves of their own: the method's gradients land here, never on the shared inputs.
    leaves = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
    held: dict[str, torch.Tensor | None] = {"out": None, "grad": None}

    def drop_grads() -> None:
        for leaf in (*leaves, *weights):
            leaf.grad = None

    def release() -> None:
        drop_grads()
        held["out"] = None

    def run_forward() -> torch.Tensor:
        with torch.enable_grad():
            out = forward(*leaves)
        if not out.requires_grad:
            raise RuntimeError("the output carries no gradient: the call is not differentiable by autograd")
        if held["grad"] is None:
            held["grad"] = output_gradient(out)
        return out

    if case.mode is Mode.BWD:
        def setup() -> None:
            release()
            held["out"] = run_forward()

        def backward() -> None:
            out, held["out"] = held["out"], None
            assert out is not None, "the backward's forward runs in setup"
            out.backward(held["grad"])

        return Step(backward, setup, release)

    def forward_backward() -> None:
        run_forward().backward(held["grad"])

    return Step(forward_backward, drop_grads, release)
