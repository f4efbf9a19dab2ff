"""Issue 9 (hardening), bounded work: decompression and size bombs (finding 7) and the hard time ceiling per series
(finding 8). No timed assertions: boundedness is asserted on the bytes unpacked and on the refusals."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from watch_helpers import QUIET, CountingSegmenter, error_files, results, wait_for, write_series

from edgeseg.bundle import Variant
from edgeseg.errors import ConfigError, InvalidSeriesError, SeriesTooLargeError
from edgeseg.runtime.plan import (
    DEFAULT_DICOM_RESULT_S,
    DEFAULT_SECONDS_PER_INSTANCE,
    LatencyTable,
    Planner,
    bundle_identity,
    plan_series,
)
from edgeseg.runtime.read import NIFTI, check_image_file, read_series
from edgeseg.runtime.read.limits import SCHEDULER_UNPACK_BYTES, ReadLimits, check_nifti_file
from edgeseg.runtime.watch.config import load_config
from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import FAILED
from helpers.plan_fakes import BUNDLE, TYPICAL, FakeBundle, latency, make_part

MB = 1024 * 1024


def write_bomb(path: Path, trailing_mb: int) -> int:
    """A valid 16 x 16 x 8 int16 .nii.gz followed by ``trailing_mb`` MB of zeros in extra gzip members (a few kB
    on disk). Returns the bytes its header promises (header + extension flag + data)."""
    img = nib.Nifti1Image(np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8), np.eye(4))
    img.to_filename(str(path))
    zeros = gzip.compress(b"\0" * MB, compresslevel=9)
    with open(path, "ab") as fh:
        for _ in range(trailing_mb):
            fh.write(zeros)
    return 352 + 16 * 16 * 8 * 2


def write_huge_header(path: Path, shape: tuple[int, int, int]) -> None:
    """A 400-byte .nii.gz whose header promises ``shape`` int16 voxels that are not there."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0\0\0\0")


# -------------------------------------------------------------------------------- finding 7: bombs and limits


def test_finding7_scheduler_check_of_a_gzip_bomb_unpacks_a_bounded_amount(tmp_path, unpacked) -> None:
    bomb = tmp_path / "bomb.nii.gz"
    promised = write_bomb(bomb, trailing_mb=96)
    assert bomb.stat().st_size < MB  # 96 MB of zeros behind a few kB
    problem, geometry = check_image_file(bomb, NIFTI)  # what the scheduler thread runs
    assert sum(unpacked) <= promised + 540 + 1  # the header, the promised data and one byte: not the 96 MB
    assert problem is not None and "decompression bomb" in problem and geometry is None


def test_finding7_large_promises_are_not_unpacked_on_the_scheduler(tmp_path, unpacked) -> None:
    huge = tmp_path / "huge.nii.gz"
    write_huge_header(huge, (4096, 4096, 4096))
    problem, geometry = check_image_file(huge, NIFTI)
    assert sum(unpacked) <= 540  # the header only; the worker applies the limits
    assert problem is None and geometry is not None and geometry.shape == (4096, 4096, 4096)
    assert 2 * 4096 ** 3 > SCHEDULER_UNPACK_BYTES


def test_finding7_reader_unpacks_at_most_the_limit_plus_one_byte(tmp_path, unpacked) -> None:
    bomb = tmp_path / "bomb.nii.gz"
    promised = write_bomb(bomb, trailing_mb=32)
    with pytest.raises(InvalidSeriesError, match="decompression bomb"):
        check_nifti_file(bomb)
    assert sum(unpacked) <= promised + 540 + 1
    unpacked.clear()
    with pytest.raises(InvalidSeriesError, match="decompression bomb"):
        read_series(bomb)  # the reader refuses it before nibabel reads anything
    assert sum(unpacked) <= promised + 540 + 1


def test_finding7_the_watcher_refuses_a_bomb_and_never_segments_it(start_watcher, segmenter, roots) -> None:
    write_bomb(roots / "bomb.nii.gz", trailing_mb=8)
    w = start_watcher(max_attempts=3)
    assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "invalid_series" and "decompression bomb" in data["error"]
    assert sum(segmenter.calls.values()) == 0 and results(roots) == []
    (row,) = w.store.rows()
    assert row.state == FAILED and row.attempts == 3  # given up at once: not retried


def test_finding7_nifti_promising_a_huge_shape_is_too_large_not_truncated(start_watcher, segmenter, roots) -> None:
    write_huge_header(roots / "huge.nii.gz", (4096, 4096, 4096))
    w = start_watcher(max_attempts=3)
    assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "too_large" and "limits.max_voxels" in data["error"]
    assert "truncated" not in data["error"] and "bug in edgeseg" not in data["what_to_do"]
    assert sum(segmenter.calls.values()) == 0
    (row,) = w.store.rows()
    assert row.state == FAILED and row.attempts == 3
    with pytest.raises(SeriesTooLargeError, match="max_voxels"):
        read_series(roots / "huge.nii.gz")  # `edgeseg segment` gets the same refusal


def _claim_65535(files: list[Path]) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Rows = ds.Columns = 65535
        ds.save_as(f)


def test_finding7_dicom_of_65535_squared_is_refused_not_a_bug_not_retried(start_watcher, segmenter, roots,
                                                                          tmp_path) -> None:
    files = write_series(tmp_path / "src", 3)
    _claim_65535(files)
    with pytest.raises(SeriesTooLargeError, match="65535 x 65535 x 3"):
        read_series(tmp_path / "src")  # before any array is allocated or pixel decoded
    w = start_watcher(max_attempts=3)
    claimed = write_series(tmp_path / "src2", 3)
    _claim_65535(claimed)
    shutil.copytree(tmp_path / "src2", roots / "exam")
    assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "too_large" and "bug in edgeseg" not in data["what_to_do"]
    assert sum(segmenter.calls.values()) == 0
    (row,) = w.store.rows()
    assert row.state == FAILED and row.attempts == 3


def test_finding7_limits_are_configured_and_validated(make_config, start_watcher, segmenter, roots) -> None:
    cfg = make_config()
    assert cfg.limits == ReadLimits() and cfg.limits.max_voxels == 2 ** 30
    with pytest.raises(ConfigError, match="limits.max_voxels"):
        make_config(**{"limits.max_voxels": 0})
    w = start_watcher(**{"limits.max_voxels": 100, "limits.max_frames": 2})
    write_series(roots / "exam", 3)  # 12 x 10 x 3 voxels, 3 images
    assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "too_large" and "limits.max_frames" in data["error"]
    assert sum(segmenter.calls.values()) == 0


# -------------------------------------------------------------------------------- finding 8: the time ceiling


def test_finding8_series_running_past_the_ceiling_is_cancelled_and_given_up(start_watcher, roots) -> None:
    # reports progress every 50 ms, as the real one does per tile; the ceiling is the segmenter's
    slow = CountingSegmenter(delay_s=60, ceiling_s=0.5)
    w = start_watcher(segment=slow, time_budget_s=0.2, time_ceiling_s=0.5, max_attempts=3)
    write_series(roots / "exam", 3)
    assert wait_for(lambda: len(error_files(roots)) == 1, timeout=30) and w.wait_idle(10)
    wait_for(lambda: False, timeout=4 * QUIET)  # time for a retry, which must not come
    data = json.loads(error_files(roots)[0].read_text())
    assert data["kind"] == "time_ceiling" and "time ceiling of 0.5 s" in data["error"]
    assert "time_ceiling_s" in data["what_to_do"]
    assert sum(slow.calls.values()) == 1 and results(roots) == [] and not list(roots.rglob(".*edgeseg*"))
    (row,) = w.store.rows()
    assert row.state == FAILED and row.attempts == 3 and row.error_kind == "time_ceiling"
    assert w.alive()


def test_finding8_series_that_cannot_fit_the_ceiling_is_refused_up_front(make_config, roots) -> None:
    bundle = FakeBundle(Variant("only", 0, "RAS", None, (make_part("p", 2.0, patch=8),)))
    cfg = make_config(time_budget_s=10.0, time_ceiling_s=50.0, max_attempts=3)
    planner = Planner(bundle, LatencyTable(None), "CPU", "auto", None, lambda *args: 100.0)  # 100 s per tile here
    seg = CountingSegmenter(options=cfg.segment_options(), ceiling_s=cfg.time_ceiling_s, planner=planner)
    w = Watcher(cfg, seg, settle_s=0.1)
    w.start()
    try:
        write_series(roots / "exam", 3)
        assert wait_for(lambda: len(error_files(roots)) == 1) and w.wait_idle(10)
        data = json.loads(error_files(roots)[0].read_text())
        assert data["kind"] == "time_ceiling" and "even the fastest plan" in data["error"]
        assert sum(seg.calls.values()) == 0
        (row,) = w.store.rows()
        assert row.state == FAILED and row.attempts == 3
    finally:
        assert w.stop()


def test_finding8_prediction_includes_reading_and_writing_per_instance() -> None:
    lat = latency({"organs": 0.5, "muscles": 0.5, "all": 0.5})
    nifti = plan_series(BUNDLE, TYPICAL, 1e6, lat, (0.0, 0.0))
    dicom = plan_series(BUNDLE, TYPICAL, 1e6, lat, (0.0, 0.0), instances=2000)
    assert dicom.predicted_s == pytest.approx(nifti.predicted_s + 2000 * DEFAULT_SECONDS_PER_INSTANCE
                                              + DEFAULT_DICOM_RESULT_S)
    assert dicom.details["instances"] == 2000


def test_finding8_read_write_cost_is_learnt_from_measured_stages(tmp_path) -> None:
    table = LatencyTable(tmp_path / "l.json")
    for name in ("organs", "muscles", "all"):
        table.put(bundle_identity(BUNDLE), name, "int8", "CPU", None, 0.001)
    planner = Planner(BUNDLE, table, "CPU", "int8", None)
    tiny = type(TYPICAL)((64, 64, 2000), (1.0, 1.0, 1.0))  # 2000 tiny slices
    plan = planner.plan(tiny, 1e6, instances=2000)
    actual = plan.predicted_s + 40.0
    planner.record(plan, actual, read_write_s=2000 * 0.03)  # reading 2000 files and writing the SEG: 60 s
    assert table.per_instance(bundle_identity(BUNDLE), "CPU", None) == pytest.approx(0.03)
    again = Planner(BUNDLE, LatencyTable(tmp_path / "l.json"), "CPU", "int8", None).plan(tiny, 1e6, instances=2000)
    assert again.predicted_s == pytest.approx(actual, rel=0.05)


def test_finding8_ceiling_is_configured_and_validated(make_config, tmp_path) -> None:
    cfg_root = tmp_path
    assert make_config(time_budget_s=120.0).time_ceiling_s == 900.0
    assert make_config(time_budget_s=600.0).time_ceiling_s == 1800.0  # the default follows a large budget
    no_ceiling = load_config(None, {"roots": [str(cfg_root)], "bundle": str(cfg_root)},
                             env={"EDGESEG_TIME_CEILING_S": "null"}, check_paths=False)
    assert no_ceiling.time_ceiling_s is None
    with pytest.raises(ConfigError, match="time_ceiling_s"):
        make_config(time_budget_s=100.0, time_ceiling_s=50.0)
    plan = plan_series(BUNDLE, TYPICAL, 1.0, latency({"organs": 5.0, "muscles": 5.0, "all": 5.0}), (0.0, 0.0),
                       ceiling_s=10.0)
    assert plan.over_ceiling and "time ceiling" in plan.reason
