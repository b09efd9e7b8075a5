"""Provenance of a run: which machine, which software, which command."""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..core.records import RunInfo
from . import allocator


def git_commit() -> str | None:
    """The checkout tbench runs from, with '-dirty' if it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return str(triton.__version__)


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(device: str, sweep: dict, argv: list[str] | None = None) -> RunInfo:
    argv = sys.argv if argv is None else argv
    on_gpu = device.startswith("cuda")
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if on_gpu else None
    return RunInfo(
        command=shlex.join(["tbench", *argv[1:]]) if argv else "",
        device=device,
        host=socket.gethostname(),
        gpu_name=gpu_name,
        gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        driver=_nvidia_driver() if on_gpu else None,
        cuda=torch.version.cuda,
        torch_version=torch.__version__,
        triton_version=_triton_version(),
        python_version=platform.python_version(),
        platform=platform.platform(),
        tbench_version=__version__,
        git_commit=git_commit(),
        sweep=sweep,
        environment=_environment(device),
    )


def _environment(device: str) -> dict:
    environment = {"cpu": cpu_name(), "cpu_count": _cpu_count(), "torch_threads": torch.get_num_threads()}
    if (heap := allocator.describe(device)) is not None:
        environment["cpu_allocator"] = heap
    return environment


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
