"""What one timed call of a case runs, per mode: the forward, the backward alone, or both.

`bwd` times the backward alone: before each sample, outside the timed region, `setup` runs the
forward on inputs that require gradients, building a fresh autograd graph for the backward to
consume (a graph is consumed by its backward). `fwd_bwd` times the forward and the backward in one
call, as a training step runs them. Every backward returns fresh gradients (`torch.autograd.grad`)
instead of adding them to ones held from the last call, an extra pass a training step does not make.

Under CUDA-graph timing a call is captured once and replayed, so it can have no setup: `bwd` then
runs its forward once, in the untimed call before the capture, and its backward keeps that autograd
graph (`retain_graph`), so that each replay runs the same backward kernels on the same saved tensors.
`fwd_bwd` needs nothing of the kind: the whole step is captured.

The same steps serve layer and model scope (harness/scoped.py): there the inputs are hidden states
or token ids (an integer tensor gets no gradient), and the module's weights, given as `weights`,
receive gradients too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.case import Case, Mode, TimingMode

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

    # Leaves of their own: the method's gradients are taken for these, never for the shared inputs.
    leaves = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
    wrt = tuple(x for x in (*leaves, *weights) if x.requires_grad)
    held: dict[str, torch.Tensor | None] = {"out": None, "grad": None}
    replayed = case.timing is TimingMode.GRAPH

    def release() -> None:
        held["out"] = None

    def run_forward() -> torch.Tensor:
        with torch.enable_grad():
            out = forward(*leaves)
        if not out.requires_grad:
            raise RuntimeError("the output carries no gradient: the call is not differentiable by autograd")
        if held["grad"] is None:
            held["grad"] = output_gradient(out)
        return out

    def gradients(out: torch.Tensor, keep_graph: bool) -> tuple[torch.Tensor | None, ...]:
        # allow_unused: a weight the output does not depend on gets no gradient, as under .backward()
        return torch.autograd.grad(out, wrt, held["grad"], retain_graph=keep_graph, allow_unused=True)

    if case.mode is Mode.BWD and replayed:
        def backward_again() -> tuple[torch.Tensor | None, ...]:
            # after a release, the first call: the timer's untimed call before its capture, on the
            # capture's stream, where the captured backward's kernels must run
            if held["out"] is None:
                held["out"] = run_forward()
            return gradients(held["out"], keep_graph=True)

        return Step(backward_again, None, release)

    if case.mode is Mode.BWD:
        def setup() -> None:
            release()
            held["out"] = run_forward()

        def backward() -> tuple[torch.Tensor | None, ...]:
            out, held["out"] = held["out"], None
            assert out is not None, "the backward's forward runs in setup"
            return gradients(out, keep_graph=False)

        return Step(backward, setup, release)

    def forward_backward() -> tuple[torch.Tensor | None, ...]:
        return gradients(run_forward(), keep_graph=False)

    return Step(forward_backward, None, release)
