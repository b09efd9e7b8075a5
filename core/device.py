"""Device names as the user writes them ('cpu', 'cuda', 'cuda:1'), checked without touching a GPU."""

from __future__ import annotations

from enum import StrEnum

from .errors import UsageError


class DeviceKind(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


def device_kind(device: str) -> DeviceKind:
    """'cuda:1' -> cuda: methods declare and check device kinds, not indices."""
    return DeviceKind(device.split(":", 1)[0])


def parse_device(text: str) -> str:
    """Checks the spelling only; whether a GPU is present is the harness's question."""
    kind, _, index = text.partition(":")
    if kind == DeviceKind.CPU and not index and ":" not in text:
        return text
    if kind == DeviceKind.CUDA and (":" not in text or index.isdigit()):
        return text
    raise UsageError(f"device '{text}' unknown; allowed: cuda, cuda:N, cpu")


def parse_device_indices(text: str, count: int) -> list[str]:
    """'all' or '0,1' -> ['cuda:0', 'cuda:1'], checked against `count` visible GPUs."""
    if text == "all":
        return [f"cuda:{i}" for i in range(count)]
    indices = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) >= count:
            raise UsageError(f"--devices '{text}': '{part}' is not a GPU index; allowed: all, or 0..{count - 1}")
        indices.append(int(part))
    return [f"cuda:{i}" for i in dict.fromkeys(indices)]
