"""The tuning record: hop configs and loads verdicts kept on disk between processes, read back in
place of tuning, never trusted when malformed, never an error when the disk refuses. The kernels run
in Triton's interpreter against the float64 spec; the record is a real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import triton
from errors import rel_err

from tbench.kernels import tensorized_triton as tt
from tbench.kernels import tuning_record as tr
from tbench.kernels.reference import tensorized_hop_f64

DIMS, AXIS = (4, 16), 1
# CPU tensors through the kernels: Triton's interpreter (conftest turns it on where no GPU is)
interpreted = pytest.mark.skipif(not tt._INTERPRET, reason="runs the kernels in Triton's interpreter")


def test_choices_outlive_the_record_object_and_merge_with_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "gpu.json"
    tr.TuningRecord(path).put("config a", 2)
    tr.TuningRecord(path).put("boxes b", False)  # another process, the same file
    again = tr.TuningRecord(path)
    assert again.get("config a") == 2 and again.get("boxes b") is False and again.get("c") is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"config a": "two", "config b": 1.5}'])
def test_a_malformed_record_is_read_as_empty_and_then_replaced(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(text)
    record = tr.TuningRecord(path)
    assert record.get("config a") is None
    record.put("config a", 1)
    assert json.loads(path.read_text()) == {"config a": 1}


def test_a_record_that_cannot_be_written_is_a_warning_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="not written"):
        tr.TuningRecord(blocker / "gpu.json").put("config a", 1)  # its folder is a file


def test_the_folder_and_the_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tr.DIR_ENV, raising=False)
    assert tr.record_folder(interpreting=True) is None
    assert tr.record_folder(interpreting=False) == Path("~/.cache/tbench/tuning").expanduser()
    monkeypatch.setenv(tr.DIR_ENV, "")
    assert tr.record_folder(interpreting=False) is None
    monkeypatch.setenv(tr.DIR_ENV, str(tmp_path))
    assert tr.record_folder(interpreting=True) == tmp_path
    names = {tr.tuning_record(tmp_path, gpu, version, digest).path.name
             for gpu, version, digest in [("NVIDIA H100 80GB HBM3", "3.6.0", "ab" * 32),
                                          ("NVIDIA H200", "3.6.0", "ab" * 32),
                                          ("NVIDIA H100 80GB HBM3", "3.7.0", "ab" * 32),
                                          ("NVIDIA H100 80GB HBM3", "3.6.0", "cd" * 32)]}
    assert len(names) == 4 and "nvidia-h100-80gb-hbm3-triton3.6.0-abababababababab.json" in names


def _config(rows: int) -> triton.Config:
    return triton.Config({"ROWS": rows, "PROGRAMS_PER_SM": 4, "SHARE_KV": False}, num_warps=4, num_stages=1,
                         pre_hook=tt._packed_desc_blocks)


@pytest.fixture
def fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two packed configs in the interpreter and a record in tmp_path; each call of the yielded
    function empties the process's caches, as a new process starts, and sets the times the tuner's
    timer reports for the two configs; it returns the list of configs the timer was asked about."""
    configs = [_config(64), _config(128)]
    monkeypatch.setattr(tt, "_packed_configs", lambda: configs)
    monkeypatch.setattr(tt._packed_tuned, "configs", configs)
    monkeypatch.setenv(tr.DIR_ENV, str(tmp_path))

    def start(times: tuple[float, float]) -> list[int]:
        timed: list[int] = []
        for name, value in (("_chosen", {}), ("_recorded", set()), ("_records", {}), ("_boxes_win", {})):
            monkeypatch.setattr(tt, name, value)
        monkeypatch.setattr(tt._packed_tuned, "cache", {})

        def bench(fn, quantiles=None) -> list[float]:
            timed.append(len(timed))
            return [times[len(timed) - 1]] * len(quantiles or [0])

        # Triton's autotuner keeps its timer in a cached property once it has timed anything
        monkeypatch.setitem(vars(tt._packed_tuned), "do_bench", bench)
        return timed

    return start


def _hop() -> tuple[torch.Tensor, float]:
    """One packed hop; its output's relative error against the float64 spec."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 32, generator=gen) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    tt._launch_hop(q, k, v, out, DIMS, AXIS, True, 32**-0.5)
    ref = tensorized_hop_f64(q, k, v, DIMS, AXIS, True)
    return out, rel_err(out, ref)


@interpreted
def test_a_later_process_launches_the_recorded_config_without_tuning(fresh_process, tmp_path: Path) -> None:
    timed = fresh_process((2.0, 1.0))  # the second config is faster
    _, err = _hop()
    assert timed == [0, 1] and err <= 1e-5
    (path,) = tmp_path.glob("cpu-triton*.json")
    assert list(json.loads(path.read_text()).values()) == [1]
    (_, _, text), = tt.tuned_configs()
    assert "ROWS=128" in text and "tuning record" not in text

    timed = fresh_process((1.0, 2.0))  # the first would win now: the record is taken as it is
    _, err = _hop()
    assert timed == [] and err <= 1e-5
    (_, _, text), = tt.tuned_configs()
    assert "ROWS=128" in text and text.endswith("(tuning record)")


@interpreted
def test_a_recorded_place_outside_the_list_is_tuned_again(fresh_process, tmp_path: Path) -> None:
    fresh_process((2.0, 1.0))
    _hop()
    (path,) = tmp_path.glob("cpu-triton*.json")
    path.write_text(json.dumps({key: 7 for key in json.loads(path.read_text())}))
    timed = fresh_process((1.0, 2.0))
    _, err = _hop()
    assert timed == [0, 1] and err <= 1e-5
    assert list(json.loads(path.read_text()).values()) == [0]


@interpreted
def test_stand_in_tuning_keeps_no_record(fresh_process, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tt, "_AUTOTUNE", False)  # TBENCH_TRITON_AUTOTUNE=0
    fresh_process((2.0, 1.0))
    _hop()
    assert list(tmp_path.glob("*.json")) == []


@interpreted
def test_a_loads_verdict_is_kept_and_read_back(fresh_process, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[int] = []

    def pointers_faster(fn) -> float:
        fn()
        measured.append(1)
        return float(len(measured) % 2)  # boxes (first) 1.0, pointers 0.0

    monkeypatch.setattr(tt, "_LOADS_TIMER", pointers_faster)
    fresh_process((1.0, 2.0, 1.0, 2.0))
    _hop()
    assert measured == [1, 1]
    (path,) = tmp_path.glob("cpu-triton*.json")
    assert sorted(v for k, v in json.loads(path.read_text()).items() if k.startswith("boxes")) == [False]

    measured.clear()
    fresh_process((1.0, 2.0))
    _, err = _hop()
    assert measured == [] and err <= 1e-5
    (kernel, _, _), = tt.tuned_configs()
    assert kernel.startswith("packed") and "-tma" not in kernel  # the pointer launch, as the record says
