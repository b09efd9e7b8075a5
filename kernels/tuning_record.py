"""Tuned launch choices kept on disk, so that a later process on a GPU of the same model launches
what an earlier one tuned instead of compiling and timing every candidate again.

A first call of `tensorized` on a new shape compiles and times every config of the hop kernels'
autotune lists (12 or more a hop, each with TMA boxes and through pointer loads): 30-100 s a shape
on a machine whose compile cache is empty. The record keeps each choice under the GPU model, the
Triton version and a digest of the kernels' source, so that a kernel that changes, a new Triton or
another GPU tunes afresh. Where the record cannot be read or written the kernels simply tune, as
without it.

`TBENCH_TUNING_DIR` names the folder (default `~/.cache/tbench/tuning` on a GPU; in Triton's
interpreter only where it is set); set it empty to keep no record.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

DIR_ENV = "TBENCH_TUNING_DIR"
DEFAULT_DIR = Path("~/.cache/tbench/tuning")

Choice = int | bool  # a config's index in its tuner's list, or whether boxes beat pointer loads


@dataclass(frozen=True)
class TuningRecord:
    """One JSON file of choices, for one GPU model, Triton version and kernel source."""

    path: Path

    def get(self, key: str) -> Choice | None:
        return self._read().get(key)

    def put(self, key: str, choice: Choice) -> None:
        """Adds one choice, keeping what other processes wrote meanwhile (read, merge, atomic
        replace); a choice that cannot be written is lost, never an error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            entries = {**self._read(), key: choice}
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as f:
                json.dump(entries, f, indent=0, sort_keys=True)
            os.replace(f.name, self.path)
        except OSError as exc:
            warnings.warn(f"tuning record {self.path} not written ({exc}); later processes tune again",
                          stacklevel=2)

    def _read(self) -> dict[str, Choice]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: tune as if none
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, (int, bool))}


def record_folder(interpreting: bool) -> Path | None:
    """Where records live, or None where none is kept."""
    folder = os.environ.get(DIR_ENV)
    if folder is None:
        return None if interpreting else DEFAULT_DIR.expanduser()
    return Path(folder).expanduser() if folder else None


def tuning_record(folder: Path, device_name: str, triton_version: str, source_digest: str) -> TuningRecord:
    """The record of one GPU model, Triton version and kernel source in `folder`."""
    device = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "device"
    return TuningRecord(folder / f"{device}-triton{triton_version}-{source_digest[:16]}.json")
