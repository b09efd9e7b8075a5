"""The sweep: parsing its axes from the command line and expanding them into Cases (no torch)."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .case import (
    DTYPE_NAMES,
    MODE_NAMES,
    PROTOCOL_NAMES,
    SCOPE_NAMES,
    Case,
    DType,
    Family,
    Mode,
    Scope,
    TimingMode,
    TimingProtocol,
)
from .errors import UsageError
from .folding import FoldingError, resolve_dims
from .shapes import model_shape


class MethodInfo(Protocol):
    family: Family
    max_order: int

    @property
    def is_tensorized(self) -> bool: ...


class Catalog(Protocol):
    """What the sweep needs of a method registry (kept abstract: the registry imports torch)."""

    def __contains__(self, name: object) -> bool: ...

    def get(self, name: str) -> MethodInfo: ...

    def names(self) -> list[str]: ...


# Exact methods as baselines for speedups, preferred first. flash2 is the reference most published
# numbers use; then the other fast exact kernels, cuDNN's first because PyTorch ships it; the
# slow references (math SDPA, the naive full attention) only when nothing faster is there.
BASELINE_PREFERENCE: tuple[str, ...] = ("flash2", "sdpa-cudnn", "flash3", "flash4", "xformers", "sdpa-efficient",
                                        "flex", "sdpa-math", "full")


# The baseline that is no single method: on each shape, the fastest exact method with an ok
# measurement there. Every tensorized, linear or sparse row then faces the strongest exact
# competitor of its own shape and pass (FlashAttention-3 for forward rows on a Hopper GPU, where
# its wheel has no backward; another kernel for the backward rows), never a slower stand-in. A
# method cannot be registered under this name.
BEST_EXACT = "best"


def preferred_baseline(names: Iterable[str]) -> str | None:
    """The first of BASELINE_PREFERENCE among `names`, or None when none of them is there."""
    present = set(names)
    return next((name for name in BASELINE_PREFERENCE if name in present), None)


_SIZE = re.compile(r"^(\d+)([kKmM]?)$")


def parse_size(text: str) -> int:
    """'4096' -> 4096, '8k' -> 8192, '1m' -> 1048576 (k = 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"length '{text}' is not a number like 4096, 8k or 1m")
    value = int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20}[match.group(2).lower()]
    if value < 1:
        raise UsageError(f"length '{text}' must be at least 1")
    return value


def parse_lengths(text: str) -> list[int]:
    """'4k..128k' (powers of two from 4096 to 131072), '1k..8k', or a list '4096,6000,8k'."""
    text = text.strip()
    if ".." in text:
        low_text, _, high_text = text.partition("..")
        low, high = parse_size(low_text), parse_size(high_text)
        if low > high:
            raise UsageError(f"lengths '{text}': a range must go upwards, e.g. {high_text}..{low_text}")
        if low & (low - 1) or high & (high - 1):
            raise UsageError(f"lengths '{text}': range ends must be powers of two (e.g. 4k..128k); else use a list")
        return [2**e for e in range(int(math.log2(low)), int(math.log2(high)) + 1)]
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("lengths '' is empty; give e.g. 4k..128k or 4096,8192")
    return sorted(set(parse_size(p) for p in parts))


def parse_ints(text: str, name: str, minimum: int = 1) -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < minimum:
            raise UsageError(f"{name} '{text}': '{part}' is not an integer >= {minimum}")
        values.append(int(part))
    return sorted(set(values))


def parse_dtypes(text: str) -> list[str]:
    values = [p.strip().lower() for p in text.split(",") if p.strip()]
    for value in values:
        if value not in DTYPE_NAMES:
            raise UsageError(f"dtype '{value}' unknown; allowed: {', '.join(DTYPE_NAMES)}")
    if not values:
        raise UsageError(f"dtype '{text}' is empty; allowed: {', '.join(DTYPE_NAMES)}")
    return list(dict.fromkeys(values))


def parse_modes(text: str) -> list[str]:
    """'fwd,bwd,fwd_bwd' -> the modes in the order given, each once."""
    values = list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not values:
        raise UsageError(f"modes '{text}' is empty; allowed: {', '.join(MODE_NAMES)}")
    for value in values:
        if value not in MODE_NAMES:
            raise UsageError(f"mode '{value}' unknown; allowed: {', '.join(MODE_NAMES)}")
    return values


def parse_scope(text: str) -> Scope:
    try:
        return Scope(text.strip().lower())
    except ValueError:
        raise UsageError(f"scope '{text}' unknown; allowed: {', '.join(SCOPE_NAMES)}") from None


def parse_protocol(text: str) -> TimingProtocol:
    try:
        return TimingProtocol(text.strip().lower())
    except ValueError:
        raise UsageError(f"protocol '{text}' unknown; allowed: {', '.join(PROTOCOL_NAMES)}") from None


def parse_names(text: str, what: str = "methods") -> list[str]:
    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise UsageError(f"{what} '{text}' is empty; give names such as sdpa-math,tensorized (see `tbench list`)")
    return names


@dataclass(frozen=True)
class Sweep:
    """Every axis of a sweep. Exact methods are measured once per shape; tensorized ones once per
    order m (with auto dims, or the explicit `dims` when given)."""

    lengths: list[int]
    methods: list[str]
    orders: list[int] = field(default_factory=lambda: [2, 3])
    batches: list[int] = field(default_factory=lambda: [1])
    heads: list[int] = field(default_factory=lambda: [32])
    kv_heads: list[int] = field(default_factory=lambda: [8])
    head_dims: list[int] = field(default_factory=lambda: [128])
    dtypes: list[str] = field(default_factory=lambda: [DType.BF16.value])
    causal: list[bool] = field(default_factory=lambda: [True])
    device: str = "cuda"
    timing: str = TimingMode.EVENTS.value
    baseline: str | None = None
    dims: tuple[int, ...] | None = None
    seed: int = 0
    # Absent from sweeps stored before modes existed: those timed the forward alone.
    modes: list[str] = field(default_factory=lambda: [Mode.FWD.value])
    # Absent from sweeps stored before scopes existed: those timed the operator alone.
    scope: str = Scope.OP.value
    model: str = ""  # the model shape preset of layer and model scope
    layers: int = 0  # model scope: decoder layers timed (K); layer scope: 1; op: 0
    protocol: str = TimingProtocol.TBENCH.value

    def as_dict(self) -> dict:
        data = asdict(self)
        data["dims"] = list(self.dims) if self.dims else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Sweep:
        data = dict(data)
        data["dims"] = tuple(data["dims"]) if data.get("dims") else None
        return cls(**data)

    def validate(self, registry: Catalog) -> None:
        self._validate_scope()
        for name in self.methods:
            if name not in registry:
                raise UsageError(f"method '{name}' unknown; known: {', '.join(registry.names())}")
        if self.baseline is not None and self.baseline != BEST_EXACT and self.baseline not in registry:
            raise UsageError(f"baseline '{self.baseline}' unknown; allowed: {BEST_EXACT} (the fastest exact "
                             f"method on each shape) or one of {', '.join(registry.names())}")
        for h in self.heads:
            for kv in self.kv_heads:
                if kv > h or h % kv:
                    raise UsageError(f"heads {h} is not a multiple of kv-heads {kv} (GQA needs H % H_kv == 0)")
        if self.dims is not None:
            if len(self.orders) != 1 or self.orders[0] != len(self.dims):
                raise UsageError(f"--dims {'x'.join(map(str, self.dims))} has {len(self.dims)} axes; "
                                 f"use it with --orders {len(self.dims)} alone")
            for n in self.lengths:
                try:
                    resolve_dims(n, len(self.dims), self.dims)
                except FoldingError as exc:
                    raise UsageError(str(exc)) from None
        else:
            self._validate_orders(registry)

    def _validate_scope(self) -> None:
        """Layer and model scope take their attention shape from the model preset."""
        scope = parse_scope(self.scope)
        parse_protocol(self.protocol)
        if scope is Scope.OP:
            return
        if not self.model:
            raise UsageError(f"scope {scope} needs a model shape: --preset tiny, llama3-8b, llama2-7b, mistral-7b "
                             "or openllama-3b")
        shape = model_shape(self.model)
        given = {"heads": self.heads, "kv-heads": self.kv_heads, "head-dim": self.head_dims}
        wanted = {"heads": shape.heads, "kv-heads": shape.kv_heads, "head-dim": shape.head_dim}
        for name, values in given.items():
            if values != [wanted[name]]:
                raise UsageError(f"--{name} {','.join(map(str, values))} conflicts with model {shape.name} "
                                 f"({name} {wanted[name]}); at scope {scope} the model sets the shape")
        if scope is Scope.LAYER and self.layers != 1:
            raise UsageError(f"--layers {self.layers} is for --scope model; a layer is one layer")
        if scope is Scope.MODEL and self.layers < 1:
            raise UsageError(f"--layers {self.layers} must be at least 1")

    def _validate_orders(self, registry: Catalog) -> None:
        """Auto dims fold N into m axes of at least 2 only while m <= ceil(log2 N); beyond that
        axes of size 1 appear, and the case is no longer an order-m tensor."""
        tensorized = [registry.get(name) for name in self.methods if registry.get(name).is_tensorized]
        if not tensorized:
            return
        shortest = min(self.lengths)
        by_length = max(1, math.ceil(math.log2(shortest)))
        by_method = min(m.max_order for m in tensorized)
        highest = min(by_length, by_method)
        for m in self.orders:
            if m > highest:
                raise UsageError(f"orders: m={m} is too high; allowed: 1..{highest} (N={shortest} folds into at "
                                 f"most {by_length} axes of size >= 2; the tensorized methods support m <= "
                                 f"{by_method})")

    def cases(self, registry: Catalog) -> list[Case]:
        """All configurations, shortest sequences first, so a sweep shows results early."""
        out: list[Case] = []
        for n in self.lengths:
            for b, h, kv, d, dtype, causal in itertools.product(self.batches, self.heads, self.kv_heads, self.head_dims,
                                                       self.dtypes, self.causal):
                if h % kv:
                    continue
                for name in self.methods:
                    method = registry.get(name)
                    for mode in self.modes:
                        base = dict(method=name, family=method.family, seq_len=n, batch=b, heads=h, kv_heads=kv,
                                    head_dim=d, dtype=dtype, causal=causal, device=self.device, timing=self.timing,
                                    mode=mode, scope=self.scope, model=self.model, layers=self.layers,
                                    protocol=self.protocol)
                        if method.is_tensorized:
                            for m in self.orders:
                                dims = resolve_dims(n, m, self.dims)
                                out.append(Case(**base, order=m, dims=dims))
                        else:
                            out.append(Case(**base))
        return out
