"""What one measurement is: the Case, and the typed values of its axes.

This floor imports no torch: the store, the analysis, the dashboard and `tbench --help` stand on it
without loading a GPU stack. Torch-side views of a case (its torch dtype, its inputs) live in
`harness/inputs.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from .folding import format_dims


class Family(StrEnum):
    """What operator a method computes, which decides its reference and its cost model."""

    EXACT = "exact"  # softmax attention over all (allowed) keys
    TENSORIZED = "tensorized"  # the multi-hop operator of docs/spec-tensorized-attention.md
    LINEAR = "linear"  # linear-attention recurrences (a state of K x V per head), gated or not
    SPARSE = "sparse"  # softmax attention over a fixed subset of keys (e.g. a causal window)
    APPROXIMATE = "approximate"  # exact attention's operator, computed with lossy arithmetic (e.g. INT8)


# The sliding-window method's window: the last W keys up to and including the query itself.
SLIDING_WINDOW = 4096


def sliding_window(seq_len: int) -> int:
    """Window of the `sliding-window` method at length N: min(4096, N / 8), at least 1, so that
    it is a true window (a fraction of N) at every length the harness runs, the CPU's too."""
    return max(1, min(SLIDING_WINDOW, seq_len // 8))


class DType(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def element_size(self) -> int:
        return 4 if self is DType.FP32 else 2


class TimingMode(StrEnum):
    """How a sample is timed: CUDA events around each call, CUDA-graph replay, or the CPU clock."""

    EVENTS = "events"
    GRAPH = "graph"
    CPU = "cpu"


class Mode(StrEnum):
    """Which pass is timed: the forward alone, the backward alone (from a forward run outside the
    timed region), or a training step's forward and backward together."""

    FWD = "fwd"
    BWD = "bwd"
    FWD_BWD = "fwd_bwd"

    @property
    def needs_backward(self) -> bool:
        return self is not Mode.FWD


class Scope(StrEnum):
    """What is timed around the attention: the operator alone, one decoder layer of a Llama-shaped
    model (norms, projections, RoPE, the attention, the MLP), or the embedding and K such layers."""

    OP = "op"
    LAYER = "layer"
    MODEL = "model"


class TimingProtocol(StrEnum):
    """How samples are taken: tbench's adaptive sampling (one call per sample, stopped by its
    precision), or the paper's (the mean of 50 forward passes run back to back after a warm-up)."""

    TBENCH = "tbench"
    PAPER = "paper"


# Forward passes averaged per sample under the paper's protocol.
PAPER_PASSES = 50


class Status(StrEnum):
    """How a measurement ended. `ok` rows passed the correctness gate; `unchecked` rows were timed
    with the gate switched off (`--no-check`): ranked and plotted like `ok`, but marked, and the
    performance gate refuses them unless told otherwise."""

    OK = "ok"
    UNCHECKED = "unchecked"
    OOM = "oom"
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"
    ERROR = "error"
    WRONG = "wrong"
    TIMEOUT = "timeout"


DTYPE_NAMES: tuple[str, ...] = tuple(d.value for d in DType)
MODE_NAMES: tuple[str, ...] = tuple(m.value for m in Mode)
SCOPE_NAMES: tuple[str, ...] = tuple(s.value for s in Scope)
PROTOCOL_NAMES: tuple[str, ...] = tuple(p.value for p in TimingProtocol)
FAMILY_NAMES: tuple[str, ...] = tuple(f.value for f in Family)
STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in Status)
# Statuses that carry a timing worth ranking.
TIMED_STATUSES: frozenset[Status] = frozenset({Status.OK, Status.UNCHECKED})


@dataclass(frozen=True)
class Case:
    """One configuration of one method: everything that determines its inputs and its operator.

    Axis values given as plain strings (from the command line, the store or a bundle) are turned
    into their enums here, so a bad value fails where the case is made."""

    method: str
    family: Family
    seq_len: int
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: DType
    causal: bool
    device: str
    order: int | None = None  # tensorized methods only
    dims: tuple[int, ...] | None = None  # resolved folding dims, tensorized methods only
    timing: TimingMode = TimingMode.EVENTS
    mode: Mode = Mode.FWD
    scope: Scope = Scope.OP
    model: str = ""  # the model shape preset (core/shapes.py) of layer and model scope; "" for op
    layers: int = 0  # decoder layers timed: 1 at layer scope, K at model scope, 0 for op
    protocol: TimingProtocol = TimingProtocol.TBENCH
    scale: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # frozen: the coercion has to go through object.__setattr__
        object.__setattr__(self, "family", Family(self.family))
        object.__setattr__(self, "dtype", DType(self.dtype))
        object.__setattr__(self, "timing", TimingMode(self.timing))
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "protocol", TimingProtocol(self.protocol))

    @property
    def is_tensorized(self) -> bool:
        return self.family is Family.TENSORIZED

    @property
    def element_size(self) -> int:
        return self.dtype.element_size

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def dims_text(self) -> str:
        return format_dims(self.dims) if self.dims else ""

    @property
    def shape_key(self) -> tuple:
        """Cases with the same shape key share their inputs (and are measured side by side)."""
        return (self.seq_len, self.batch, self.heads, self.kv_heads, self.head_dim, self.dtype,
                self.causal, self.device, self.scope, self.model, self.layers)

    @property
    def is_op(self) -> bool:
        return self.scope is Scope.OP

    def attention(self) -> Case:
        """The attention operator inside a layer or model case: the same case at op scope."""
        return replace(self, scope=Scope.OP, model="", layers=0, protocol=TimingProtocol.TBENCH)

    @property
    def key(self) -> str:
        """The full identity of a configuration; matched across runs by gate and resume. Forward
        cases keep the key they had before modes existed (so older stores and baselines match);
        the other modes append theirs, and so do layer and model scope and the paper's protocol."""
        causal = "causal" if self.causal else "full"
        order = f"m{self.order}" if self.order is not None else "m-"
        key = (f"{self.method}|N{self.seq_len}|{order}|{self.dims_text or '-'}|B{self.batch}"
               f"|H{self.heads}|KV{self.kv_heads}|D{self.head_dim}|{self.dtype}|{causal}|{self.timing}")
        if self.mode is not Mode.FWD:
            key += f"|{self.mode}"
        if self.scope is not Scope.OP:
            key += f"|{self.scope}|{self.model}|L{self.layers}"
        if self.protocol is not TimingProtocol.TBENCH:
            key += f"|{self.protocol}"
        return key

    def label(self) -> str:
        order = f" m={self.order} ({self.dims_text})" if self.order is not None else ""
        mode = "" if self.mode is Mode.FWD else f" {self.mode}"
        scope = "" if self.scope is Scope.OP else f" {self.scope} {self.model} x{self.layers}"
        protocol = "" if self.protocol is TimingProtocol.TBENCH else f" ({self.protocol})"
        return f"{self.method}{order} N={self.seq_len}{mode}{scope}{protocol}"

    def as_dict(self) -> dict:
        data = asdict(self)
        for name in ("family", "dtype", "timing", "mode", "scope", "protocol"):
            data[name] = str(data[name])
        data["dims"] = list(self.dims) if self.dims else None
        return data

    def input_bytes(self) -> int:
        return self.batch * (self.heads + 2 * self.kv_heads) * self.seq_len * self.head_dim * self.element_size
