"""What `tbench quality` trains: presets, the options that override them, and the list of
configurations (method, order, length, seed, learning rate) they expand to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum

from ..core.case import DType
from ..core.errors import UsageError
from ..core.folding import format_dims, resolve_dims
from ..core.sweep import parse_size
from ..methods.registry import Registry
from .tasks import TASK_NAMES, Task, TaskSpec


class QualityPreset(StrEnum):
    TINY = "tiny"  # the CPU in well under a minute: two small lengths, a reference and an exact method
    DEFAULT = "default"  # one H200: MQAR at 3 lengths x the methods below x 3 seeds x 1 learning rate


PRESET_NAMES: tuple[str, ...] = tuple(p.value for p in QualityPreset)

# Exact methods, preferred first: the first available one is the preset's exact row.
EXACT_PREFERENCE = ("flash2", "sdpa-cudnn", "sdpa-math")


@dataclass(frozen=True)
class Settings:
    task: Task
    lengths: tuple[int, ...]
    methods: tuple[tuple[str, int | None], ...]  # (method, order); order None for non-tensorized methods
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    steps: int
    vocab: int
    items: int
    d_model: int
    layers: int
    heads: int
    mlp: bool
    dtype: DType
    device: str
    eval_sequences: int
    # sequences per training step: tokens_per_step over the length, held within batch_bounds
    tokens_per_step: int
    batch_bounds: tuple[int, int]

    def batch(self, seq_len: int) -> int:
        low, high = self.batch_bounds
        return max(low, min(high, self.tokens_per_step // seq_len))

    def as_dict(self) -> dict:
        data = asdict(self)
        data["task"], data["dtype"] = str(self.task), str(self.dtype)
        data["methods"] = [list(m) for m in self.methods]
        return data


@dataclass(frozen=True)
class Configuration:
    method: str
    order: int | None
    dims: tuple[int, ...] | None
    seq_len: int
    seed: int
    lr: float

    @property
    def key(self) -> str:
        order = f"m{self.order}" if self.order is not None else "m-"
        dims = format_dims(self.dims) if self.dims else "-"
        return f"{self.method}|N{self.seq_len}|{order}|{dims}|seed{self.seed}|lr{self.lr:g}"

    def label(self) -> str:
        order = f" m={self.order}" if self.order is not None else ""
        return f"{self.method}{order} N={self.seq_len} seed={self.seed} lr={self.lr:g}"


@dataclass(frozen=True)
class QualityRequest:
    """The command line's values, as typed (None: the preset's)."""

    preset: str = QualityPreset.TINY
    device: str = "cpu"
    task: str | None = None
    methods: str | None = None
    orders: str | None = None
    lengths: str | None = None
    seeds: str | None = None
    lrs: str | None = None
    steps: int | None = None
    items: int | None = None


@dataclass(frozen=True)
class QualityPlan:
    settings: Settings
    configurations: tuple[Configuration, ...]
    left_out: tuple[str, ...]  # preset methods not available on this device, with why


def _ints(text: str, what: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{what} '{text}' must be integers separated by commas, e.g. 0,1,2") from None
    if not values or any(v < minimum for v in values):
        raise UsageError(f"{what} '{text}' must be integers >= {minimum} separated by commas")
    return tuple(dict.fromkeys(values))


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{what} '{text}' must be numbers separated by commas, e.g. 1e-3,3e-3") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise UsageError(f"{what} '{text}' must be numbers between 0 and 1 (exclusive) separated by commas")
    return tuple(dict.fromkeys(values))


def _lengths(text: str) -> tuple[int, ...]:
    values = tuple(dict.fromkeys(parse_size(part) for part in text.split(",") if part.strip()))
    if not values:
        raise UsageError(f"lengths '{text}' must be a list such as 256,1024,4096")
    return values


def preset_settings(preset: QualityPreset, device: str) -> Settings:
    on_gpu = device.startswith("cuda")
    if preset is QualityPreset.TINY:
        return Settings(task=Task.MQAR, lengths=(32, 48), methods=(("tensorized-ref", 2), ("sdpa-math", None)),
                        seeds=(0,), lrs=(5e-3,), steps=200, vocab=32, items=4, d_model=64, layers=2, heads=2,
                        mlp=False, dtype=DType.BF16 if on_gpu else DType.FP32, device=device, eval_sequences=256,
                        tokens_per_step=2**15, batch_bounds=(8, 64))
    # 256 = 16x16, 1024 = 32x32, 4096 = 16x16x16 fold exactly at the orders that name them.
    # Calibrated on the CPU (docs/quality.md, "Method"): exact attention learns MQAR only after several
    # hundred steps of at least ~1000 scored queries each (16 per sequence); 400 steps of 2^15 tokens
    # stayed at chance. The batch is cheap on a GPU, the steps are not: 2^18 tokens, 64 to 256 sequences.
    # 8 pairs: on an H200 exact attention left the 1/K plateau with 8 within 500 steps, with 16 not in 600.
    return Settings(task=Task.MQAR, lengths=(256, 1024, 4096),
                    methods=(("tensorized", 2), ("tensorized", 3), ("tensorized", 4), ("tensorized-ref", 2),
                             *((name, None) for name in EXACT_PREFERENCE), ("simple-gla", None), ("gla", None)),
                    seeds=(0, 1, 2), lrs=(3e-3,), steps=600, vocab=256, items=8, d_model=128, layers=2,
                    heads=2, mlp=False, dtype=DType.BF16 if on_gpu else DType.FP32, device=device,
                    eval_sequences=512, tokens_per_step=2**18, batch_bounds=(64, 256))


def plan_quality(request: QualityRequest, registry: Registry, available: dict[str, str | None]) -> QualityPlan:
    """`available` maps each method name to None if it runs on the device, else why not."""
    try:
        preset = QualityPreset(request.preset)
    except ValueError:
        raise UsageError(f"preset '{request.preset}' unknown; allowed: {', '.join(PRESET_NAMES)}") from None
    settings = preset_settings(preset, request.device)
    if request.task is not None:
        if request.task not in TASK_NAMES:
            raise UsageError(f"task '{request.task}' unknown; allowed: {', '.join(TASK_NAMES)}")
        settings = replace(settings, task=Task(request.task))
    if request.lengths is not None:
        settings = replace(settings, lengths=_lengths(request.lengths))
    if request.seeds is not None:
        settings = replace(settings, seeds=_ints(request.seeds, "seeds", 0))
    if request.lrs is not None:
        settings = replace(settings, lrs=_floats(request.lrs, "learning rates"))
    if request.steps is not None:
        if request.steps < 1:
            raise UsageError(f"steps {request.steps} must be at least 1")
        settings = replace(settings, steps=request.steps)
    if request.items is not None:
        settings = replace(settings, items=request.items)  # the task spec below says if it fits
    orders = _ints(request.orders, "orders", 1) if request.orders is not None else None

    left_out: list[str] = []
    if request.methods is not None:
        names = tuple(dict.fromkeys(m.strip() for m in request.methods.split(",") if m.strip()))
        if not names:
            raise UsageError("--methods is empty; name at least one method")
        for name in names:
            if name not in registry:
                raise UsageError(f"method '{name}' unknown; known: {', '.join(registry.names())}")
            if available.get(name) is not None:
                raise UsageError(f"method '{name}' is unavailable on {request.device}: {available[name]}")
        pairs = [(name, 2 if registry.get(name).is_tensorized else None) for name in names]
    else:
        pairs, exact_taken = [], False
        for name, order in settings.methods:
            if name not in registry or available.get(name) is not None:
                if name not in EXACT_PREFERENCE:
                    left_out.append(f"{name}: {available.get(name) or 'not registered'}")
                continue
            if name in EXACT_PREFERENCE:
                if exact_taken:
                    continue
                exact_taken = True
            pairs.append((name, order))
    if orders is not None:  # the orders asked for replace every tensorized method's
        pairs = [(name, order) for name in dict.fromkeys(n for n, _ in pairs)
                 for order in (orders if registry.get(name).is_tensorized else (None,))]
    settings = replace(settings, methods=tuple(dict.fromkeys(pairs)))
    TaskSpec(settings.task, min(settings.lengths), settings.vocab, settings.items)  # refuses a too short length

    return QualityPlan(settings, expand(settings), tuple(left_out))


def expand(settings: Settings) -> tuple[Configuration, ...]:
    """The configurations of the settings: lengths outermost, then methods, seeds, learning rates."""
    configurations = []
    for n in settings.lengths:
        for name, order in settings.methods:
            dims = resolve_dims(n, order) if order is not None else None
            for seed in settings.seeds:
                for lr in settings.lrs:
                    configurations.append(Configuration(name, order, dims, n, seed, lr))
    return tuple(configurations)


def settings_from_sweep(sweep: dict) -> Settings:
    """The settings a quality run stored (`Settings.as_dict`), read back; UsageError if they are not there."""
    try:
        data = {f.name: sweep[f.name] for f in fields(Settings)}
        return replace(Settings(**data), task=Task(data["task"]), lengths=tuple(data["lengths"]),
                       methods=tuple((str(m), None if o is None else int(o)) for m, o in data["methods"]),
                       seeds=tuple(data["seeds"]), lrs=tuple(data["lrs"]), dtype=DType(data["dtype"]),
                       batch_bounds=tuple(data["batch_bounds"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the run's stored settings cannot be read ({type(exc).__name__}: {exc}); "
                         "only a run made by `tbench quality` can be resumed") from None
