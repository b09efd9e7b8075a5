"""The method registry: declarative attention methods, built-in and from plugins.

A method is a `Method` value made by the `@method(...)` decorator around its call. Nothing is
registered as a side effect of importing: `load_registry()` builds a fresh `Registry` from the
built-in list and from the entry-point group `tbench.methods`, so tests and tools can hold
several registries side by side, and a broken plugin is reported instead of breaking the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..core.case import DTYPE_NAMES, Case, Family
from ..core.device import device_kind
from ..core.sweep import BEST_EXACT

Call = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Case], torch.Tensor]
Prepare = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Case], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


@dataclass(frozen=True)
class Availability:
    """Whether a method can run on a device, and what exactly runs when it does."""

    available: bool
    reason: str = ""  # why not, when unavailable
    provenance: str = ""  # what really runs, e.g. "FlashAttention-2 via torch SDPA flash backend"


def always_available(provenance: str) -> Callable[[str], Availability]:
    return lambda device: Availability(True, provenance=provenance)


@dataclass(frozen=True)
class Method:
    name: str
    family: Family
    call: Call
    description: str
    availability: Callable[[str], Availability]
    devices: frozenset[str] = frozenset({"cuda", "cpu"})
    dtypes: frozenset[str] = frozenset(DTYPE_NAMES)
    causal: bool = True
    noncausal: bool = True
    gqa: bool = True
    head_dims: frozenset[int] | None = None  # None: any head dim
    max_order: int = 8  # tensorized methods: orders 1..max_order
    # Extra device bytes the call needs beyond its inputs; the runner skips what cannot fit.
    memory_estimate: Callable[[Case], int] | None = None
    # Per-case provenance (e.g. which xFormers operator dispatches); defaults to availability's.
    describe: Callable[[Case], str] | None = None
    # Puts inputs into the layout the call wants (outside the timed region), e.g. (B, N, H, D).
    prepare: Prepare | None = None
    # Builds the call for one case before it is warmed up, checked or timed: what a real caller
    # makes once per shape and reuses (a FlexAttention block mask, a compiled function).
    bind: Callable[[Case], Call] | None = None
    # Relative L2 error the correctness gate allows this method against its float64 definition;
    # None: the gate's calibrated tolerance (harness/correctness.py). For a method that is
    # knowingly less precise than plain evaluation in its dtype (e.g. INT8 or fp8 inner products).
    tolerance: Callable[[Case], float] | None = None
    # The method's own float64 definition, for families whose operator is not fixed by the family
    # alone (linear: which recurrence, which gates): (q, k, v, case) -> float64 (B, H, N, D).
    reference: Call | None = None
    # A further one-line reason a case cannot run, decided when it runs (e.g. by what build is installed).
    unsupported: Callable[[Case], str | None] | None = None
    # Whether torch.autograd differentiates the call with respect to q, k and v, so that the `bwd`
    # and `fwd_bwd` modes can run it; a forward-only kernel says False.
    backward: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "family", Family(self.family))
        except ValueError:
            allowed = ", ".join(f.value for f in Family)
            raise ValueError(f"method {self.name}: family '{self.family}' unknown; allowed: {allowed}") from None

    @property
    def is_tensorized(self) -> bool:
        return self.family is Family.TENSORIZED

    def unsupported_reason(self, case: Case) -> str | None:
        """A one-line reason this method cannot run the case, or None if it can."""
        if device_kind(case.device) not in self.devices:
            return f"runs on {', '.join(sorted(self.devices))} only, not {case.device}"
        if case.dtype not in self.dtypes:
            return f"dtype {case.dtype} unsupported; supported: {', '.join(sorted(self.dtypes))}"
        if case.causal and not self.causal:
            return "causal masking unsupported"
        if not case.causal and not self.noncausal:
            return "non-causal attention unsupported"
        if case.kv_heads != case.heads and not self.gqa:
            return f"GQA (H={case.heads}, H_kv={case.kv_heads}) unsupported"
        if self.head_dims is not None and case.head_dim not in self.head_dims:
            allowed = ", ".join(str(d) for d in sorted(self.head_dims))
            return f"head dim {case.head_dim} unsupported; supported: {allowed}"
        if self.is_tensorized and case.order is not None and not 1 <= case.order <= self.max_order:
            return f"order m={case.order} unsupported; supported: 1..{self.max_order}"
        if case.mode.needs_backward and not self.backward:
            return f"mode {case.mode} needs a backward pass; {self.name} is forward-only here"
        if self.unsupported is not None:
            return self.unsupported(case)
        return None

    def prepared(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.prepare(q, k, v, case) if self.prepare is not None else (q, k, v)

    def bound(self, case: Case) -> Call:
        """The call to time for this case (see `bind`)."""
        return self.bind(case) if self.bind is not None else self.call

    def provenance(self, case: Case) -> str:
        if self.describe is not None:
            return self.describe(case)
        return self.availability(device_kind(case.device)).provenance


def method(
    *,
    name: str,
    family: str,
    description: str,
    availability: Callable[[str], Availability],
    **supports: object,
) -> Callable[[Call], Method]:
    """Decorator: turn `call(q, k, v, case) -> out` into a declarative `Method`."""

    def wrap(call: Call) -> Method:
        return Method(name=name, family=family, call=call, description=description,
                      availability=availability, **supports)  # type: ignore[arg-type]

    return wrap


@dataclass(frozen=True)
class PluginError:
    entry_point: str
    message: str


@dataclass
class Registry:
    methods: dict[str, Method] = field(default_factory=dict)
    plugin_errors: list[PluginError] = field(default_factory=list)

    def add(self, item: Method) -> None:
        if item.name in self.methods:
            raise ValueError(f"method name '{item.name}' is registered twice")
        if item.name == BEST_EXACT:
            raise ValueError(f"method name '{item.name}' is reserved: it names the fastest exact method on "
                             "each shape as a baseline")
        self.methods[item.name] = item

    def get(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            known = ", ".join(self.methods)
            raise KeyError(f"unknown method '{name}'; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.methods

    def __iter__(self) -> Iterator[Method]:
        return iter(self.methods.values())

    def names(self) -> list[str]:
        return list(self.methods)
