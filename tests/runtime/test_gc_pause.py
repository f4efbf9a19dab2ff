"""The cyclic collector paused while a DICOM object is built (runtime/write/gc_pause.py): counted across threads,
restored as it was, and in force while the SEG and SR writers run."""
from __future__ import annotations

import gc
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from edgeseg.runtime.read import read_series
from edgeseg.runtime.write import dicomseg, frame_groups, write_dicom_seg, write_dicom_sr
from edgeseg.runtime.write.gc_pause import gc_paused
from edgeseg.runtime.write.statistics import compute_statistics


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_runs_again_only_when_the_last_writer_is_done() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with gc_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with gc_paused():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = gc.isenabled()
        seen["after both left"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after the first left": False, "after both left": True}


def test_a_collector_that_was_off_stays_off_and_an_error_restores_it() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a writer failed")
    assert gc.isenabled()


def test_seg_and_sr_are_built_and_saved_with_the_collector_paused(
        dicom_series_dirs: dict[str, Path], seg_array: np.ndarray, labels: dict[int, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    series = tmp_path / "series"
    shutil.copytree(dicom_series_dirs["oblique"], series)
    vol = read_series(series)
    during: list[bool] = []

    def save(ds: Any, path: Any) -> None:
        during.append(gc.isenabled())
        frame_groups.save_as(ds, path)

    monkeypatch.setattr(dicomseg, "save_as", save)
    segments = write_dicom_seg(tmp_path / "seg.dcm", vol, seg_array, labels)
    assert during == [False] and gc.isenabled()

    import highdicom as hd

    real_sr = hd.sr.Comprehensive3DSR

    def built(*args: Any, **kwargs: Any) -> Any:
        during.append(gc.isenabled())
        return real_sr(*args, **kwargs)

    monkeypatch.setattr(hd.sr, "Comprehensive3DSR", built)
    write_dicom_sr(tmp_path / "sr.dcm", vol, tmp_path / "seg.dcm", segments,
                   compute_statistics(vol, seg_array, labels))
    assert during == [False, False] and gc.isenabled()
    assert (tmp_path / "sr.dcm").stat().st_size > 0
