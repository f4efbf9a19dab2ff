"""Helpers for the watcher tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
from helpers.fake_segmenter import FakeSegmenter

QUIET = 0.6  # quiet period of the in-process watcher tests (seconds)


def write_series(folder: Path, n: int = 6, *, description: str = "t1 test", uid: str | None = None,
                 seed: int = 0, names: str = "random", skip: tuple[int, ...] = (), **kwargs: Any) -> list[Path]:
    """A small classic MR DICOM series (12 x 10 x n voxels, 2 mm) via the demo writer; slices in ``skip`` are
    written and then removed (a series with missing slices whose headers still announce ``n`` images)."""
    from edgeseg.demo.dicom_series import write_dicom_series

    rng = np.random.default_rng(seed)
    array = rng.integers(0, 1000, size=(12, 10, n)).astype(np.int16)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = write_dicom_series((array, affine), folder, series_description=description, series_uid=uid,
                               file_names=names, **kwargs)
    for k in skip:
        paths[k].unlink()
    return [p for i, p in enumerate(paths) if i not in skip]


def write_non_image(path: Path, uid: str | None = None) -> Path:
    """A DICOM object without pixels (a Basic Text SR header): parses, has a SeriesInstanceUID, is no image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesDescription = "report"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def copy_slowly(files: list[Path], target: Path, delay_s: float = 0.05) -> list[Path]:
    """Copy files one by one with a pause, like a console exporting a series."""
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        dst = target / f.name
        shutil.copyfile(f, dst)
        out.append(dst)
        time.sleep(delay_s)
    return out


def _glob(root: Path, pattern: str) -> list[Path]:
    """rglob that tolerates the watcher renaming a temporary folder away while we walk (retries)."""
    for _ in range(20):
        try:
            return list(root.rglob(pattern))
        except FileNotFoundError:
            time.sleep(0.01)
    return list(root.rglob(pattern))


def tree(root: Path) -> set[str]:
    """Every path below ``root`` (relative, posix)."""
    return {p.relative_to(root).as_posix() for p in _glob(root, "*")}


def results(root: Path) -> list[Path]:
    """Finished ``*.edgeseg`` result folders below ``root``."""
    return sorted(p for p in _glob(root, "*.edgeseg") if p.is_dir())


def error_files(root: Path) -> list[Path]:
    return sorted(_glob(root, "*.edgeseg-error.json"))


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class CountingSegmenter(FakeSegmenter):
    """The fake segmenter, counting calls per series key; ``fail`` maps a key substring to an exception. The other
    arguments are :class:`~helpers.fake_segmenter.FakeSegmenter`'s (the time ceiling, a planner ...)."""

    def __init__(self, delay_s: float = 0.0, options: Any = None, **kwargs: Any) -> None:
        super().__init__(delay_s, options, **kwargs)
        self.calls: Counter[str] = Counter()
        self.fail: dict[str, BaseException] = {}
        self.lock = threading.Lock()
        self.name = "counting_fake_segment"

    def _segment(self, source: Any, *args: Any) -> Any:
        with self.lock:
            self.calls[source.key] += 1
        for part, err in self.fail.items():
            if part in source.key:
                raise err
        return super()._segment(source, *args)
