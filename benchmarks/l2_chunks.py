"""Would running both hops of m = 2 a few heads at a time beat running each hop over all heads?

At 16k-64k, m = 2, both `tensorized` and the SDPA composition run at 74-85 % of the spec's bytes
floor (docs/kernel.md), which counts every hop's reads and writes from HBM. Run hop 1 and hop 2 for
one chunk of heads before the next chunk, and hop 2 may find the chunk's intermediate (which hop 1
has just written), its Q and its K still in the L2 cache: up to 39 % fewer HBM bytes if all of it
stays, against more launches, each with its own last wave. This measures whether it does.

For B=1, H=32, H_kv=8, D=128, bf16, causal, m = 2 (auto dims), each hop on the backend
`tensorized` chooses for the whole problem (FA3 or cuDNN; Triton where neither takes it), prints
the median GPU time (the GPU held until each call is issued, as tbench times), the host's issue
time, and the median time of the call replayed as a CUDA graph (no host time at all: many small
launches can take longer to issue than to run, and then only the graph shows what the L2 does) of:
  whole                the two hops over all heads (as `tensorized` runs them)
  chunks of G heads    per chunk, hop 1 then hop 2 on views of its heads; a hop whose backend returns
                       its own tensor (cuDNN) has it copied into place
  ... outputs apart    the same without that copy (the lever's ceiling: what a backend that writes
                       into a view would give)
  ... on FA3+FA3       chunks of one head, whose hop 2 FA3 takes (one kv head for one value head)
                       and writes into place
  ... 2 streams        chunks on two CUDA streams in turn, so that one chunk's hop 1 can run beside
                       the previous chunk's hop 2 (no fewer bytes: fuller waves)
each with its largest difference from `whole`.

    python3 benchmarks/l2_chunks.py [--lengths 16k,32k,64k,128k] [--chunks 4,1] [--samples 30]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.harness.timing import CudaEventTimer, CudaGraphTimer
from tbench.kernels.hop_backend import HopBackend
from tbench.kernels.tensorized_dispatch import (
    backend_for_hop,
    choose_hop_backends,
    library_candidates,
    run_hop,
    tensorized_attention_dispatch,
    writes_into_buffer,
)
from tbench.methods.tensorized import _median_cuda_seconds

B, H, H_KV, D = 1, 32, 8, 128


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], causal: bool, scale: float,
            backends: Sequence[HopBackend], heads: int, out: torch.Tensor, scratch: torch.Tensor,
            place: bool = True, streams: Sequence[torch.cuda.Stream] = ()) -> list[torch.Tensor]:
    """Every hop for query heads [h, h + heads), then the next chunk; returns each chunk's output.
    Outputs of backends that write into a buffer land in `out` (the last hop) or `scratch`; a
    returned tensor is copied into `out` when `place` is on. With `streams`, chunk i runs on
    streams[i % len(streams)], so that one chunk's hop 1 can overlap another's hop 2; they start
    after, and the current stream waits for, all work queued before. Needs B = 1, so that a chunk's
    heads are one contiguous block of every (B, H, N, D) tensor and the hops take views of it."""
    if q.shape[0] != 1:
        raise ValueError(f"chunked hops need batch 1, got {q.shape[0]}")
    group = q.shape[1] // k.shape[1]
    if q.shape[1] % heads or (heads % group and group % heads):
        raise ValueError(f"chunks of {heads} heads do not tile {q.shape[1]} heads in kv groups of {group}")
    results = []
    main = torch.cuda.current_stream() if streams else None
    for stream in streams:
        stream.wait_stream(main)
    for i, h in enumerate(range(0, q.shape[1], heads)):
        with torch.cuda.stream(streams[i % len(streams)]) if streams else contextlib.nullcontext():
            results.append(_chunk(q, k, v, dims, causal, scale, backends, h, heads, group, out, scratch, place))
    for stream in streams:
        main.wait_stream(stream)
    for result in results if streams else ():
        result.record_stream(main)  # made on a side stream, used on this one from here on
    return results


def _chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], causal: bool, scale: float,
           backends: Sequence[HopBackend], h: int, heads: int, group: int, out: torch.Tensor, scratch: torch.Tensor,
           place: bool) -> torch.Tensor:
    """Every hop for query heads [h, h + heads) (see `chunked`)."""
    axes = hop_axes(len(dims))
    kv = slice(h // group, h // group + max(1, heads // group))
    q_c, k_c, value = q[:, h:h + heads], k[:, kv], v[:, kv]
    for t, (axis, backend) in enumerate(zip(axes, backends, strict=True)):
        chosen = backend_for_hop(backend, q_c, k_c, value, dims, axis)
        target = (out if t == len(axes) - 1 else scratch)[:, h:h + heads]
        value = run_hop(chosen, q_c, k_c, value, target if writes_into_buffer(chosen) else None, dims, axis,
                        causal, scale)
    if place and value.data_ptr() != out[:, h:h + heads].data_ptr():
        out[:, h:h + heads].copy_(value)
    return value


@dataclass(frozen=True)
class Timers:
    """CUDA events with the GPU held until a call is issued (what tbench stores), and the call
    replayed as a CUDA graph (no host time at all: what the GPU alone takes)."""

    events: CudaEventTimer
    graph: CudaGraphTimer


def times(timers: Timers, fn: Callable[[], object], samples: int) -> tuple[float, float, float | None]:
    """(events ms, host ms, graph ms or None where the call cannot be captured), medians."""
    fn()
    prepared = timers.events.prepare(fn)
    events_ms = statistics.median(timers.events.sample(prepared) for _ in range(samples))
    try:
        replay = timers.graph.prepare(fn)
    except RuntimeError:  # a backend that cannot be captured
        return events_ms, prepared.host_ms or 0.0, None
    return events_ms, prepared.host_ms or 0.0, statistics.median(timers.graph.sample(replay) for _ in range(samples))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def measure(timers: Timers, n: int, chunk_heads: Sequence[int], samples: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    dims = auto_dims(n, 2)
    scale = D**-0.5
    candidates = library_candidates()
    backends = choose_hop_backends(q, k, v, dims, True, None, candidates, _median_cuda_seconds)
    whole = tensorized_attention_dispatch(q, k, v, dims, True, None, backends)
    out, scratch = torch.empty_like(q), torch.empty_like(q)
    names = "+".join(b.value for b in backends)
    base_ms, base_host, base_graph = times(timers, lambda: tensorized_attention_dispatch(q, k, v, dims, True, None,
                                                                                          backends), samples)
    print(f"| {n} | {format_dims(dims)} | {names} | whole | {base_ms:.3f} | 1.00 | {base_host:.3f} | "
          f"{_ms(base_graph)} | {'-' if base_graph is None else '1.00'} | 0 |", flush=True)
    two = (torch.cuda.Stream(), torch.cuda.Stream())
    # (heads a chunk, backends, copy into place, streams)
    variants = [(heads, backends, place, ()) for heads in chunk_heads for place in (True, False)]
    variants += [(heads, backends, True, two) for heads in chunk_heads]
    if HopBackend.FA3 in candidates and 1 in chunk_heads:
        # one head per chunk has one kv head: FA3 takes hop 2 too, and writes it into place
        variants.append((1, (HopBackend.FA3, HopBackend.FA3), True, ()))
    for heads, chunk_backends, place, streams in variants:
        def run(heads: int = heads, chunk_backends: Sequence[HopBackend] = chunk_backends, place: bool = place,
                streams: Sequence[torch.cuda.Stream] = streams) -> list[torch.Tensor]:
            return chunked(q, k, v, dims, True, scale, chunk_backends, heads, out, scratch, place, streams)

        parts = run()
        diff = max((part.float() - whole[:, i * heads:(i + 1) * heads].float()).abs().max().item()
                   for i, part in enumerate(parts))
        ms, host, graph = times(timers, run, samples)
        graph_ratio = "-" if graph is None or base_graph is None else f"{graph / base_graph:.2f}"
        label = f"chunks of {heads} head{'s' if heads > 1 else ''}" + ("" if place else ", outputs apart")
        if chunk_backends != backends:
            label += " on " + "+".join(b.value for b in chunk_backends)
        if streams:
            label += f", {len(streams)} streams in turn"
        print(f"| {n} | {format_dims(dims)} | {names} | {label} | {ms:.3f} | {ms / base_ms:.2f} | {host:.3f} "
              f"| {_ms(graph)} | {graph_ratio} | {diff:.2e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16k,32k,64k,128k")
    parser.add_argument("--chunks", default="4,1", help="query heads per chunk (4: one kv group)")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda")
    timers = Timers(CudaEventTimer(device), CudaGraphTimer(device))
    print("| N | dims | hop backends | run | GPU ms | / whole | host ms | graph ms | / whole | max diff from whole |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for n in parse_lengths(args.lengths):
        measure(timers, n, parse_ints(args.chunks, "chunks"), args.samples)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
