"""Run planning: what the user asked for (a RunRequest) becomes a Sweep and the run's settings.

A named preset fills in every value the request leaves out (None); what the request gives wins.
The command line, the methodology scripts and anything else that starts a run plan it here, so
that the defaults exist once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from enum import StrEnum

from ..core.case import Family, Mode, Scope
from ..core.device import DeviceKind, device_kind, parse_device, parse_device_indices
from ..core.errors import UsageError
from ..core.folding import parse_dims
from ..core.shapes import MODEL_SHAPES, ModelShape
from ..core.sweep import (
    BEST_EXACT,
    Catalog,
    Sweep,
    parse_dtypes,
    parse_ints,
    parse_lengths,
    parse_modes,
    parse_names,
    parse_protocol,
    parse_scope,
)
from .measure import MeasureSettings
from .runner import RunOptions
from .shard import parse_shard
from .timing import TimingPolicy


class Preset(StrEnum):
    HEADLINE = "headline"  # the published GPU sweep
    QUICK = "quick"  # a first look: 4k..16k, short sampling (not yet timed on a GPU)
    CPU = "cpu"  # small enough for a CPU
    # Model shape presets (core/shapes.py): the attention shape of a published model, and for
    # --scope layer and model the layer around it.
    TINY = "tiny"  # small enough for a CPU
    LLAMA3_8B = "llama3-8b"
    LLAMA2_7B = "llama2-7b"
    MISTRAL_7B = "mistral-7b"
    OPENLLAMA_3B = "openllama-3b"


@dataclass(frozen=True)
class PresetValues:
    """Every value a preset supplies; sizes as the command line writes them."""

    lengths: str
    heads: str
    kv_heads: str
    head_dim: str
    dtype: str
    orders: str = "2,3"
    batch: str = "1"
    causal: bool = True
    target_rse: float = 0.005
    min_samples: int = 10
    min_time_s: float = 1.0
    budget_s: float = 10.0
    held_back_min_time_s: float = TimingPolicy.held_back_min_time_s
    clock_settle_max_s: float = TimingPolicy.clock_settle_max_s
    device: DeviceKind | None = None  # a preset made for one kind of device picks it
    # The methods measured when --methods is not given (those available here); None: every
    # available method. The run names the available methods a preset leaves out.
    methods: tuple[str, ...] | None = None
    model: str | None = None  # the model shape preset of layer and model scope


# The headline sweep: the strongest competitor of each kind that tbench can run, and the
# reference points a reader expects (FlashAttention-2, the PyTorch compositions); each method
# family is represented by one method. The others stay one --methods away: `full` and `sdpa-math`
# only show what materialising N x N costs, `sdpa-efficient`, `xformers` and `flex` are slower
# exact kernels than cuDNN and FA3, the other linear methods share simple-gla's kernels, and
# `tensorized-ref` (one SDPA call per hop, default dispatch) is never faster than tensorized-sdpa,
# which tries every SDPA backend for each hop. `tensorized` runs each hop on the fastest backend,
# `tensorized-triton` shows what tbench's kernel alone does.
HEADLINE_METHODS: tuple[str, ...] = (
    "flash2", "sdpa-cudnn", "flash3", "flash4",  # exact
    "tensorized", "tensorized-triton", "tensorized-sdpa",  # tensorized
    "simple-gla",  # linear
    "sliding-window",  # sparse
    "sage",  # approximate
)


PRESETS: dict[Preset, PresetValues] = {
    # Aimed at five minutes on one H200 (measured: about ten, most of it compilation and autotuning;
    # docs/results-h200.md): a held-back rotation settles for at most 4 s and samples for at least
    # 1 s (the methodology checks use 12 s and 3 s to study run-to-run repeatability).
    Preset.HEADLINE: PresetValues(lengths="4k..128k", heads="32", kv_heads="8", head_dim="128", dtype="bf16",
                                  held_back_min_time_s=1.0, clock_settle_max_s=4.0, methods=HEADLINE_METHODS),
    Preset.QUICK: PresetValues(lengths="4k..16k", heads="32", kv_heads="8", head_dim="128", dtype="bf16",
                               target_rse=0.02, min_samples=5, min_time_s=0.2, budget_s=2.0,
                               held_back_min_time_s=0.5),
    Preset.CPU: PresetValues(lengths="512..2k", heads="4", kv_heads="2", head_dim="64", dtype="fp32",
                             min_time_s=0.1, budget_s=2.0, device=DeviceKind.CPU),
}

# What the model presets measure without --methods: the exact kernels the paper's comparison needs,
# tensorized attention and the fastest linear peer (issue: the paper's Figure 5).
MODEL_METHODS: tuple[str, ...] = ("flash2", "flash3", "sdpa-cudnn", "tensorized", "simple-gla")


def _model_preset(shape: ModelShape) -> PresetValues:
    """A published model's shape on a GPU: 4k..128k in bf16, with sampling short enough for calls
    that take up to seconds (a layer at 128k tokens and batch 5)."""
    return PresetValues(lengths="4k..128k", heads=str(shape.heads), kv_heads=str(shape.kv_heads),
                        head_dim=str(shape.head_dim), dtype="bf16", target_rse=0.02, min_samples=5,
                        min_time_s=0.3, budget_s=3.0, held_back_min_time_s=0.5, clock_settle_max_s=2.0,
                        methods=MODEL_METHODS, model=shape.name)


PRESETS[Preset.TINY] = PresetValues(
    lengths="256..1k", heads=str(MODEL_SHAPES["tiny"].heads), kv_heads=str(MODEL_SHAPES["tiny"].kv_heads),
    head_dim=str(MODEL_SHAPES["tiny"].head_dim), dtype="fp32", min_time_s=0.1, budget_s=2.0, model="tiny")
for _preset in (Preset.LLAMA3_8B, Preset.LLAMA2_7B, Preset.MISTRAL_7B, Preset.OPENLLAMA_3B):
    PRESETS[_preset] = _model_preset(MODEL_SHAPES[_preset.value])

TIMING_MODES = {DeviceKind.CUDA: ("events", "graph"), DeviceKind.CPU: ("cpu",)}


def parse_preset(text: str) -> Preset:
    try:
        return Preset(text)
    except ValueError:
        raise UsageError(f"preset '{text}' unknown; allowed: {', '.join(p.value for p in Preset)}") from None


@dataclass(frozen=True)
class RunRequest:
    """What was asked for; None means 'not given': the preset or the device decides."""

    preset: Preset | None = None
    lengths: str | None = None
    orders: str | None = None
    batch: str | None = None
    heads: str | None = None
    kv_heads: str | None = None
    head_dim: str | None = None
    dtype: str | None = None
    causal: bool | None = None
    methods: str | None = None
    baseline: str | None = None
    dims: str | None = None
    device: str | None = None
    devices: str | None = None
    timing: str | None = None
    modes: str | None = None  # e.g. "fwd,bwd,fwd_bwd"; None: the forward alone
    scope: str | None = None  # op, layer or model; None: op
    layers: int | None = None  # model scope: layers timed; None: the model's depth
    protocol: str | None = None  # tbench or paper; None: tbench
    target_rse: float | None = None
    min_samples: int | None = None
    min_time: float | None = None
    budget: float | None = None
    cool_to: float | None = None
    spin_up: float | None = None  # seconds a fresh worker keeps the GPU busy first
    held_back_min_time: float | None = None
    timeout: float = 300.0
    check: bool = True
    isolate: bool = True
    seed: int = 0
    shard: str | None = None
    run_key: str | None = None


@dataclass(frozen=True)
class RunPlan:
    sweep: Sweep
    options: RunOptions
    preset: Preset
    devices: list[str] | None = None  # one worker per GPU
    shard: tuple[int, int] | None = None
    run_uuid: str | None = None  # from the run key: every process with the same key joins one run
    left_out: tuple[str, ...] = ()  # available methods the preset does not measure

    @property
    def policy(self) -> TimingPolicy:
        return self.options.settings.policy


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_uuid(key: str) -> str:
    """A run key that is a UUID is used as is; any other text maps to a fixed UUID."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tbench-run:{key}"))


def plan_run(request: RunRequest, registry: Catalog, resumed: Sweep | None = None,
             gpus: int | None = None) -> RunPlan:
    """The sweep and settings of a run. `resumed` is the sweep of a run being continued: its axes
    stay, only the settings come from the request. `gpus` is the number of visible GPUs (None:
    ask torch)."""
    gpus = gpu_count() if gpus is None else gpus
    left_out: tuple[str, ...] = ()
    if resumed is not None:
        sweep = resumed
        sweep.validate(registry)
        device = _usable_device(sweep.device, gpus)
        preset = request.preset or _default_preset(device)
    else:
        fixed = PRESETS[request.preset].device if request.preset else None
        device = _usable_device(request.device or (fixed or ("cuda" if gpus else "cpu")), gpus)
        preset = request.preset or _default_preset(device)
        available = _available(registry, device) if request.methods is None else []
        sweep = _sweep(request, PRESETS[preset], device, registry, available)
        left_out = tuple(name for name in available if name not in sweep.methods)
    values = PRESETS[preset]
    policy = _policy(request, values)
    options = RunOptions(settings=MeasureSettings(policy=policy, seed=sweep.seed, check=request.check),
                         isolate=request.isolate, case_timeout_s=request.timeout)
    if request.timeout <= 0:
        raise UsageError(f"timeout {request.timeout} must be positive")
    devices = _devices(request.devices, device, gpus) if request.devices else None
    shard = parse_shard(request.shard) if request.shard else None
    if shard is not None and request.run_key is None and resumed is None:
        raise UsageError(f"--shard {request.shard} needs --run-key KEY (e.g. the job-array id) so that all parts "
                         "fill one run")
    return RunPlan(sweep=sweep, options=options, preset=preset, devices=devices, shard=shard,
                   run_uuid=run_uuid(request.run_key) if request.run_key is not None else None,
                   left_out=left_out)


def _default_preset(device: str) -> Preset:
    return Preset.HEADLINE if device_kind(device) is DeviceKind.CUDA else Preset.CPU


def _usable_device(device: str, gpus: int) -> str:
    device = parse_device(device)
    if device_kind(device) is DeviceKind.CUDA and not gpus:
        raise UsageError(f"device '{device}' asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def _devices(text: str, device: str, gpus: int) -> list[str]:
    if device_kind(device) is not DeviceKind.CUDA:
        raise UsageError(f"--devices {text} needs GPUs, but the device is {device}")
    return parse_device_indices(text, gpus)


def _sweep(request: RunRequest, values: PresetValues, device: str, registry: Catalog,
           available: list[str]) -> Sweep:
    """`available`: the methods available on the device, from which a request without --methods picks."""
    kind = device_kind(device)
    mode = request.timing or TIMING_MODES[kind][0]
    if mode not in TIMING_MODES[kind]:
        raise UsageError(f"timing '{mode}' not possible on {device}; allowed: {', '.join(TIMING_MODES[kind])}")
    if request.methods is not None:  # given but empty is an error, not the default set
        methods = parse_names(request.methods)
    else:
        methods = available
        if values.methods is not None:
            methods = [name for name in methods if name in values.methods]
    if not methods:
        raise UsageError("no method is available on this device; see `tbench list`")
    sweep = Sweep(
        lengths=parse_lengths(values.lengths if request.lengths is None else request.lengths),
        methods=methods,
        orders=parse_ints(request.orders or values.orders, "orders"),
        batches=parse_ints(request.batch or values.batch, "batch"),
        heads=parse_ints(request.heads or values.heads, "heads"),
        kv_heads=parse_ints(request.kv_heads or values.kv_heads, "kv-heads"),
        head_dims=parse_ints(request.head_dim or values.head_dim, "head-dim"),
        dtypes=parse_dtypes(request.dtype or values.dtype),
        causal=[values.causal if request.causal is None else request.causal],
        device=device,
        timing=mode,
        baseline=request.baseline or _default_baseline(methods, registry),
        dims=parse_dims(request.dims) if request.dims else None,
        seed=request.seed,
        modes=parse_modes(request.modes) if request.modes is not None else [Mode.FWD.value],
        protocol=parse_protocol(request.protocol or "tbench").value,
        **_scope_axes(request, values),
    )
    sweep.validate(registry)
    return sweep


def _default_baseline(methods: list[str], registry: Catalog) -> str:
    """The fastest exact method on each shape when the sweep measures an exact method; otherwise
    the first method (a sweep of tensorized methods compares among them)."""
    # an unknown name is left to Sweep.validate, which says so in one line
    if any(name in registry and registry.get(name).family is Family.EXACT for name in methods):
        return BEST_EXACT
    return methods[0]


def _scope_axes(request: RunRequest, values: PresetValues) -> dict:
    """The sweep's scope, model and layers: the model comes from the preset, the layers from
    --layers (model scope only; by default the model's published depth)."""
    scope = parse_scope(request.scope or Scope.OP.value)
    if scope is Scope.OP:
        if request.layers is not None:
            raise UsageError(f"--layers {request.layers} needs --scope model")
        return {"scope": scope.value, "model": "", "layers": 0}
    if values.model is None:
        models = ", ".join(MODEL_SHAPES)
        raise UsageError(f"--scope {scope} needs a model shape preset: --preset one of {models}")
    if scope is Scope.LAYER:
        if request.layers is not None:
            raise UsageError(f"--layers {request.layers} is for --scope model; --scope layer times one layer")
        return {"scope": scope.value, "model": values.model, "layers": 1}
    layers = MODEL_SHAPES[values.model].layers if request.layers is None else request.layers
    if layers < 1:
        raise UsageError(f"--layers {layers} must be at least 1")
    return {"scope": scope.value, "model": values.model, "layers": layers}


def _available(registry: Catalog, device: str) -> list[str]:
    kind = device_kind(device)
    return [m.name for m in registry if m.availability(kind).available]  # type: ignore[attr-defined]


def _policy(request: RunRequest, values: PresetValues) -> TimingPolicy:
    target_rse = values.target_rse if request.target_rse is None else request.target_rse
    min_samples = values.min_samples if request.min_samples is None else request.min_samples
    if not 0 < target_rse < 1:
        raise UsageError(f"target-rse {target_rse} must be between 0 and 1")
    if min_samples < 1:
        raise UsageError(f"min-samples {min_samples} must be at least 1")
    if request.min_time is not None and request.min_time < 0:
        raise UsageError(f"min-time {request.min_time} must be at least 0 seconds")
    if request.budget is not None and request.budget <= 0:
        raise UsageError(f"budget {request.budget} must be positive (seconds of sampling per measurement at most)")
    if request.cool_to is not None and not 0 < request.cool_to < 100:
        raise UsageError(f"cool-to {request.cool_to} must be a temperature in deg C between 0 and 100")
    policy = TimingPolicy(target_rse=target_rse, min_samples=min_samples,
                          min_time_s=values.min_time_s if request.min_time is None else request.min_time,
                          budget_s=values.budget_s if request.budget is None else request.budget,
                          cool_to_c=request.cool_to, clock_settle_max_s=values.clock_settle_max_s,
                          held_back_min_time_s=values.held_back_min_time_s if request.held_back_min_time is None
                          else request.held_back_min_time)
    if request.spin_up is not None:
        policy = replace(policy, spinup_s=request.spin_up)
    return policy
