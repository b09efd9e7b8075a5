"""Registers, spills and shared memory of the Triton kernels as compiled for a Hopper GPU, on any machine.

Every hop of the benchmark shape (B=1, H=32, H_kv=8, D=128, causal, auto dims) is planned on meta
tensors exactly as a run would launch it (kernels/tensorized_triton.py `plan_hop`,
kernels/tensorized_backward.py `plan_hop_backward`): the forward with each config of its autotune
list, the backward with its table's shapes, each with TMA boxes where they serve and through
pointer loads. Each launch is compiled ahead of time for the target (no GPU needed: Triton's own
ptxas), with the specialisations a real launch gets (arguments equal to 1 become constants,
16-divisible ones and pointers carry divisibility hints), and `cuobjdump` reads the registers per
thread, the stack bytes per thread (spills) and the shared memory per program. Programs per SM are
what registers and shared memory allow (65,536 registers, 228 KB). The PTX column is a digest of
each launch's code less its line numbers: equal digests before and after a source change (a
helper taken out, say) mean it alters nothing the GPU runs, so it needs no GPU to time.

    python3 benchmarks/kernel_resources.py [--lengths 128k] [--orders 2,3] [--dtype bf16] [--first] [--json PATH]

`--first` compiles only the first config of each autotune list (the one used when autotuning is off).
Must run without TRITON_INTERPRET (the interpreter's kernels do not compile).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("kernel_resources.py compiles for a GPU: run it without TRITON_INTERPRET=1")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.tools.tensor_descriptor import TensorDescriptor

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels import tensorized_backward as tb
from tbench.kernels import tensorized_triton as tt

B, H, H_KV, D = 1, 32, 8, 128
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# launch options, not kernel parameters
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 228 * 1024
_DEBUG_LABEL = re.compile(r"\$L__tmp\d+:")  # marks inlined scopes for the debug sections, never a branch target
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@dataclass
class Row:
    n: int
    dims: str
    pass_: str
    hop: int
    length: int
    inner: int
    kernel: str
    config: str
    loads: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    programs_per_sm: int
    ptx: str  # digest of the code, less its line numbers: a source change that keeps it changed nothing that runs


def _signature(kernel: triton.runtime.JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a launch as Triton's launcher would specialise it."""
    params = inspect.signature(kernel.fn).parameters
    names = kernel.arg_names
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if i < len(args):
            value = args[i]
        elif name in kwargs:
            value = kwargs[name]
        else:
            value = params[name].default
        if name in kwargs or i >= len(args) or value is None or isinstance(value, bool | str):
            signature[name], constexprs[(i,)] = "constexpr", value
        elif isinstance(value, TensorDescriptor):
            signature[name] = f"tensordesc<{_TYPE_NAMES[value.base.dtype]}{list(value.block_shape)}>"
        elif isinstance(value, torch.Tensor):
            signature[name] = f"*{_TYPE_NAMES[value.dtype]}"
            attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 256-byte aligned
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[(i,)] = "constexpr", 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialise a {type(value).__name__}")
    return signature, constexprs, attrs


def compile_launch(kernel: triton.runtime.JITFunction, args: tuple, kwargs: dict, arch: int
                   ) -> tuple[int, int, int, str]:
    """(registers per thread, spill bytes per thread, shared bytes per program, `ptx_digest`) of
    one launch."""
    signature, constexprs, attrs = _signature(kernel, args, kwargs)
    options = {k: kwargs[k] for k in _OPTIONS if kwargs.get(k) is not None}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        text = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump gave no resource usage for {kernel.fn.__name__}: {text[:200]}")
    return int(found[1]), int(found[2]), int(compiled.metadata.shared), ptx_digest(compiled.asm["ptx"])


def ptx_digest(ptx: str) -> str:
    """A digest of a kernel's PTX without what only names source lines (`.loc`, `.file`, comments,
    the debug sections and their `$L__tmp` labels), so that moving code between functions or lines
    keeps it. PTX rather than SASS: ptxas 12.x does not always give the same machine code for the
    same PTX (the packed backward with TMA boxes, at equal registers), while Triton gives the same
    PTX for the same source."""
    code = ptx.split("\t.section\t.debug", 1)[0]
    lines = (line.split("//", 1)[0].strip() for line in code.splitlines())
    kept = [line for line in lines
            if line and not line.startswith((".loc", ".file")) and not _DEBUG_LABEL.fullmatch(line)]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:12]


def programs_per_sm(registers: int, shared: int, warps: int) -> int:
    """Resident programs per SM allowed by registers (allocated per warp in units of 256) and shared
    memory (1 KB reserved per program)."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_shared = SHARED_PER_SM // (shared + 1024)
    return min(by_registers, by_shared, 64 // warps, 32)


def _row(n: int, dims: tuple[int, ...], pass_: str, t: int, axis: int, launch_kernel: triton.runtime.JITFunction,
         config_text: str, tma: bool, args: tuple, kwargs: dict, arch: int) -> Row:
    registers, spills, shared, ptx = compile_launch(launch_kernel, args, kwargs, arch)
    return Row(n, format_dims(dims), pass_, t + 1, dims[axis], math.prod(dims[axis + 1:]),
               launch_kernel.fn.__name__.strip("_"), config_text, "tma" if tma else "pointers", registers, spills,
               shared, programs_per_sm(registers, shared, kwargs.get("num_warps", 4)), ptx)


def forward_rows(n: int, dims: tuple[int, ...], dtype: torch.dtype, first: bool, arch: int) -> list[Row]:
    q = torch.empty(B, H, n, D, dtype=dtype, device="meta")
    k = torch.empty(B, H_KV, n, D, dtype=dtype, device="meta")
    v = torch.empty(B, H_KV, n, D, dtype=dtype, device="meta")
    rows = []
    for t, axis in enumerate(hop_axes(len(dims))):
        value = v if t == 0 else torch.empty_like(q)
        packed = dims[axis] <= tt.PACKED_MAX_LEN
        configs = tt._packed_configs() if packed else tt._flash_configs()
        if packed:
            # as the autotuner's prune: a tile must hold whole slices
            block_l = max(16, triton.next_power_of_2(dims[axis]))
            configs = [c for c in configs if tt._packed_fits(c, block_l, q.element_size())]
        for config in configs[:1] if first else configs:
            for tma in (True, False):
                launch = tt.plan_hop(q, k, value, torch.empty_like(q), dims, axis, True, D**-0.5, config, tma=tma)
                rows.append(_row(n, dims, "forward", t, axis, launch.kernel, tt._config_text(config),
                                 launch.descs is not None, launch.args, launch.bind(config), arch))
    return rows


def backward_rows(n: int, dims: tuple[int, ...], dtype: torch.dtype, arch: int) -> list[Row]:
    q = torch.empty(B, H, n, D, dtype=dtype, device="meta")
    k = torch.empty(B, H_KV, n, D, dtype=dtype, device="meta")
    v = torch.empty(B, H_KV, n, D, dtype=dtype, device="meta")
    dq = torch.empty(B, H, n, D, dtype=torch.float32, device="meta")
    dk = torch.empty(B, H_KV, n, D, dtype=torch.float32, device="meta")
    lse = torch.empty(B, H, n, dtype=torch.float32, device="meta")
    rows = []
    for t, axis in enumerate(hop_axes(len(dims))):
        value = v if t == 0 else torch.empty_like(q)
        # a middle hop of the backward: it adds to the float32 sums and writes them back
        grads = tb.Gradients(dq, dq, dk, dk, accumulate=True)
        # Delta handed between hops, as backward_from_saved does
        deltas = tb.Deltas(given=torch.empty_like(lse) if t < len(dims) - 1 else None,
                           previous=torch.empty_like(lse) if t > 0 else None)
        # the table's launches, and the variants: the blocked kernels with dQ fused, the packed kernel
        # with its gradients' products transposed, with two pipeline stages, and both
        # (backward_tiles.py --levers times the same three)
        plans = [("backward", None, None)]
        if dims[axis] > tb.PACKED_MAX_LEN:
            plans.append(("backward, dQ fused", tb.fused_blocks(dims[axis], dtype), None))
        else:
            tile = tb.packed_tile(dims[axis], dtype)
            plans += [("backward, products transposed", None, replace(tile, transposed=True)),
                      ("backward, two stages", None, replace(tile, num_stages=2)),
                      ("backward, products transposed, two stages", None,
                       replace(tile, transposed=True, num_stages=2))]
        for (pass_, blocks, packed), tma in itertools.product(plans, (True, False)):
            launches = tb.plan_hop_backward(q, k, value, torch.empty_like(q), torch.empty_like(q), lse, grads,
                                            torch.empty_like(value), dims, axis, True, D**-0.5, blocks=blocks,
                                            packed=packed, tma=tma, deltas=deltas)
            for launch in launches:
                if launch.kernel is tb._delta_kernel and tma:
                    continue  # loads through pointers either way: listed once, in the pointer pass
                shape = {key: val for key, val in launch.kwargs.items()
                         if key in ("ROWS", "BLOCK_M", "BLOCK_N", "BLOCK")}
                text = " ".join(f"{key}={val}" for key, val in shape.items())
                text += f" warps={launch.kwargs['num_warps']} stages={launch.kwargs['num_stages']}"
                boxed = any(isinstance(arg, TensorDescriptor) for arg in launch.args)
                rows.append(_row(n, dims, pass_, t, axis, launch.kernel, text, boxed, launch.args, launch.kwargs,
                                 arch))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--first", action="store_true", help="only the first config of each autotune list")
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    args = parser.parse_args()
    rows: list[Row] = []
    print("| N | dims | pass | hop | L | C | kernel | config | loads | registers | spill bytes | shared KB "
          "| programs/SM | PTX |")
    print("|---|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---|")
    for n in parse_lengths(args.lengths):
        for m in parse_ints(args.orders, "orders"):
            dims = auto_dims(n, m)
            new = forward_rows(n, dims, DTYPES[args.dtype], args.first, args.arch)
            new += backward_rows(n, dims, DTYPES[args.dtype], args.arch)
            for r in new:
                print(f"| {r.n} | {r.dims} | {r.pass_} | {r.hop} | {r.length} | {r.inner} | {r.kernel} | {r.config} "
                      f"| {r.loads} | {r.registers} | {r.spill_bytes} | {r.shared_bytes / 1024:.1f} "
                      f"| {r.programs_per_sm} | {r.ptx} |", flush=True)
            rows += new
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"triton": triton.__version__, "arch": args.arch, "dtype": args.dtype,
                       "rows": [asdict(r) for r in rows]}, fh, indent=1)


if __name__ == "__main__":
    main()
