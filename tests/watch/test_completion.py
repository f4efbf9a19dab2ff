"""Series completion with a controlled clock: files arrive, settle, group, complete, re-open."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from watch_helpers import write_non_image, write_series

from edgeseg.runtime.watch import completion
from edgeseg.runtime.read import DICOM, NIFTI, expected_instances, fingerprint, instance_from_header, stamp_files
from edgeseg.runtime.read.headers import LOCALIZER_ONLY
from edgeseg.runtime.watch.completion import CompletionTracker
from edgeseg.runtime.watch.jobs import INVALID
from edgeseg.runtime.watch.observer import PathFilter

QUIET = 10.0
SETTLE = 1.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "in"
    r.mkdir()
    return r


@pytest.fixture
def tracker(root: Path, clock: Clock) -> CompletionTracker:
    return CompletionTracker(QUIET, PathFilter([root], exclude=["*.txt"]), settle_s=SETTLE, clock=clock)


def run(tracker: CompletionTracker, clock: Clock, seconds: float, step: float = 0.5) -> list:
    """Poll every ``step`` seconds of fake time for ``seconds``; return every completed job."""
    jobs = []
    end = clock.t + seconds
    while clock.t < end:
        jobs.extend(tracker.poll().complete)
        clock.advance(step)
    return jobs


def arrive(tracker: CompletionTracker, clock: Clock, files: list[Path], target: Path, gap: float = 2.0) -> list:
    """Copy files into ``target`` one by one, ``gap`` fake seconds apart, polling in between."""
    target.mkdir(parents=True, exist_ok=True)
    jobs = []
    for f in files:
        dst = target / f.name
        shutil.copyfile(f, dst)
        tracker.touch(dst)
        jobs.extend(run(tracker, clock, gap))
    return jobs


def test_slice_by_slice_series_completes_once_after_the_quiet_period(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 8)
    jobs = arrive(tracker, clock, files, root / "exam")
    assert jobs == []  # gaps (2 s) are shorter than the quiet period (10 s)
    jobs = run(tracker, clock, QUIET - 3)  # 2 s + 7 s since the last slice
    assert jobs == []
    jobs = run(tracker, clock, 3)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.kind == DICOM and len(job.files) == 8 and job.folder == root / "exam"
    assert job.expected_instances == 8 and job.problem is None and job.skip is None
    assert job.fingerprint == fingerprint(stamp_files(job.folder, job.files))
    assert job.geometry is not None and job.geometry.shape == (12, 10, 8)
    assert job.geometry.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert "/" not in job.name and ".." not in job.name
    assert run(tracker, clock, 3 * QUIET) == []  # handed out once
    assert tracker.idle()


def test_never_reads_a_file_while_it_grows(tracker, clock, root, tmp_path, monkeypatch) -> None:
    reads: list[Path] = []
    real = completion.read_dicom_header
    monkeypatch.setattr(completion, "read_dicom_header", lambda p: reads.append(p) or real(p))
    data = write_series(tmp_path / "src", 1)[0].read_bytes()
    target = root / "exam" / "IM1"
    target.parent.mkdir()
    with open(target, "wb") as fh:
        for i in range(0, len(data), 100):  # grows between every look
            fh.write(data[i:i + 100])
            fh.flush()
            tracker.touch(target)
            tracker.poll()
            clock.advance(SETTLE + 0.1)
    assert reads == []  # never parsed while the size changed between two looks
    run(tracker, clock, SETTLE + 1)
    assert reads == [target]
    assert len(run(tracker, clock, QUIET + 1)) == 1


def test_two_series_interleaved_in_one_folder(tracker, clock, root, tmp_path) -> None:
    a = write_series(tmp_path / "a", 5, description="t1", seed=1)
    b = write_series(tmp_path / "b", 7, description="t2", seed=2)
    interleaved = [f for pair in zip(a, b) for f in pair] + b[5:]
    jobs = arrive(tracker, clock, interleaved, root / "exam", gap=1.0)
    jobs += run(tracker, clock, QUIET + 2)
    assert len(jobs) == 2
    by_size = sorted(jobs, key=lambda j: len(j.files))
    assert [len(j.files) for j in by_size] == [5, 7]
    assert {f.name for f in by_size[0].files} == {f.name for f in a}
    assert {f.name for f in by_size[1].files} == {f.name for f in b}
    assert by_size[0].folder == by_size[1].folder and by_size[0].key != by_size[1].key
    assert by_size[0].name != by_size[1].name


def test_announced_count_waits_then_proceeds(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 6, skip=(3,))  # headers say 6 images, 5 arrive
    arrive(tracker, clock, files, root / "exam", gap=0.5)
    assert run(tracker, clock, 2 * QUIET) == []  # quiet, but the count is not reached
    jobs = run(tracker, clock, QUIET + 1)
    assert len(jobs) == 1 and len(jobs[0].files) == 5
    assert any("announce 6 images, 5 arrived" in n for n in jobs[0].notes)


def test_late_instance_reopens_the_series(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 6, names="ordered")
    arrive(tracker, clock, files[:5], root / "exam", gap=0.5)
    first = run(tracker, clock, 3 * QUIET + 1)  # the last slice is late: count timeout, handed out with 5
    assert len(first) == 1 and len(first[0].files) == 5
    arrive(tracker, clock, files[5:], root / "exam")
    second = run(tracker, clock, QUIET + 2)
    assert len(second) == 1 and len(second[0].files) == 6
    assert second[0].key == first[0].key and second[0].fingerprint != first[0].fingerprint
    assert second[0].notes == ()


def test_rewritten_file_reopens_the_series(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 3)
    arrive(tracker, clock, files, root / "exam", gap=0.5)
    (first,) = run(tracker, clock, QUIET + 2)
    target = root / "exam" / files[0].name
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    tracker.touch(target)
    (second,) = run(tracker, clock, QUIET + 3)
    assert second.fingerprint != first.fingerprint and len(second.files) == 3


def test_nifti_written_in_chunks_completes_once_when_it_opens(tracker, clock, root, real_mri) -> None:
    data = real_mri.read_bytes()
    target = root / "case.nii.gz"
    with open(target, "wb") as fh:
        for i in range(0, len(data), len(data) // 4 + 1):
            fh.write(data[i:i + len(data) // 4 + 1])
            fh.flush()
            tracker.touch(target)
            assert run(tracker, clock, 2.0) == []
    jobs = run(tracker, clock, QUIET + 2)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.kind == NIFTI and job.files == (target,) and job.problem is None and job.name == "case"
    assert job.geometry is not None and job.geometry.shape == (117, 91, 20)
    assert run(tracker, clock, QUIET) == []


def test_truncated_nifti_that_stays_truncated_is_a_problem(tracker, clock, root, real_mri) -> None:
    data = real_mri.read_bytes()
    (root / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    tracker.scan(root)
    (job,) = run(tracker, clock, QUIET + 2)
    assert job.problem and "does not open" in job.problem


def test_initial_scan_backdates_files_that_arrived_while_down(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 4)
    (root / "old").mkdir()
    for f in files:
        shutil.copy2(f, root / "old" / f.name)
        past = f.stat().st_mtime_ns - 3600 * 10**9
        os.utime(root / "old" / f.name, ns=(past, past))
    tracker.scan(root, initial=True)
    jobs = run(tracker, clock, 2 * SETTLE + 1)  # no quiet period to wait: they are an hour old
    assert len(jobs) == 1 and len(jobs[0].files) == 4


def test_unreadable_files_alone_become_their_own_jobs(tracker, clock, root, tmp_path) -> None:
    (root / "a").mkdir()
    (root / "a" / "empty.dcm").write_bytes(b"")
    (root / "b").mkdir()
    (root / "b" / "junk.bin").write_bytes(os.urandom(300))
    (root / "c").mkdir()
    good = write_series(tmp_path / "src", 3)
    data = good[0].read_bytes()
    (root / "c" / "truncated_header").write_bytes(data[:200])
    tracker.scan(root)
    assert run(tracker, clock, QUIET - 1) == []  # a bad file is only declared bad once it stayed so
    jobs = sorted(run(tracker, clock, 3), key=lambda j: j.key)
    assert [j.kind for j in jobs] == [INVALID] * 3
    reasons = {Path(j.key).name: j.problem for j in jobs}
    assert "empty file" in reasons["empty.dcm"]
    assert "not a readable DICOM" in reasons["junk.bin"]
    assert "truncated_header" in reasons and reasons["truncated_header"]
    assert all(j.folder == Path(j.key).parent for j in jobs)
    assert tracker.idle()


def test_unreadable_file_beside_a_series_is_attached_to_it(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 3)
    (root / "exam").mkdir()
    for f in files:
        shutil.copyfile(f, root / "exam" / f.name)
    (root / "exam" / "notes.bin").write_bytes(b"not dicom at all" * 10)
    (root / "exam" / "ignored.txt").write_text("excluded by pattern")
    tracker.scan(root)
    jobs = run(tracker, clock, QUIET + 3)
    assert len(jobs) == 1 and len(jobs[0].files) == 3
    assert [n for n, _ in jobs[0].invalid_files] == ["notes.bin"]


def test_non_image_and_localizer_series(tracker, clock, root, tmp_path) -> None:
    write_non_image(root / "sr" / "report.dcm")
    write_series(root / "loc", 3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    tracker.scan(root)
    jobs = {j.folder.name: j for j in run(tracker, clock, QUIET + 3)}
    assert jobs["sr"].problem == ("nothing in this series can be segmented: 1 file(s), e.g. "
                                  f"{root / 'sr' / 'report.dcm'}: structured report")
    assert jobs["loc"].skip == LOCALIZER_ONLY and jobs["loc"].problem is None


def test_outputs_hidden_and_excluded_files_are_not_input(tracker, clock, root, tmp_path) -> None:
    (root / "x.edgeseg").mkdir()
    (root / "x.edgeseg" / "seg.nii.gz").write_bytes(b"0")
    (root / "x.edgeseg-error.json").write_text("{}")
    (root / ".x.edgeseg.partial-1234").mkdir()
    (root / ".x.edgeseg.partial-1234" / "a").write_bytes(b"0")
    (root / ".hidden").write_bytes(b"0")
    (root / "readme.txt").write_text("x")
    assert tracker.scan(root) == 0
    assert run(tracker, clock, QUIET * 2) == [] and tracker.idle()


def test_deleted_series_is_forgotten(tracker, clock, root, tmp_path) -> None:
    files = write_series(tmp_path / "src", 3)
    arrive(tracker, clock, files, root / "exam", gap=0.5)
    shutil.rmtree(root / "exam")
    tracker.touch(root / "exam")
    assert run(tracker, clock, QUIET * 4) == []
    assert tracker.counts()["series"] == 0 and tracker.idle()


def test_expected_instances_rules(tmp_path) -> None:
    import pydicom

    files = write_series(tmp_path / "s", 4)
    infos = [instance_from_header(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    assert expected_instances(infos) == 4
    from dataclasses import replace

    no_count = [replace(i, images_in_acquisition=None) for i in infos]
    assert expected_instances(no_count) is None
    dynamic = [replace(i, images_in_acquisition=None, temporal_positions=3) for i in infos]
    assert expected_instances(dynamic) == 3 * 4  # 3 time points x 4 slice positions
    enhanced = [replace(infos[0], images_in_acquisition=None, frames=40)]
    assert expected_instances(enhanced) is None  # every frame is in the one (settled) file
    assert expected_instances([replace(enhanced[0], concatenation_total=2)]) == 2


def test_uidless_series_complete_under_the_key_and_name_discovery_gives_them(tracker, clock, root) -> None:
    """Issue 11, item 4: instances with empty UIDs were invalid files ("no SeriesInstanceUID"); the tracker now
    groups them as the reader's discovery does (folder + identity derived from the headers)."""
    from helpers.dicom_cases import uidless_series

    from edgeseg.runtime.read import discover_series

    uidless_series(root / "deid", 5, description="t1", series_number=3, seed=1)
    uidless_series(root / "deid", 4, description="t2", series_number=4, seed=2)
    tracker.scan(root)
    jobs = run(tracker, clock, QUIET + 3)
    refs = discover_series(root)
    assert sorted((j.key, j.name, len(j.image_files)) for j in jobs) == sorted(
        (r.key, r.name, len(r.files)) for r in refs)
    assert len(jobs) == 2 and all(j.problem is None and j.invalid_files == () for j in jobs)
