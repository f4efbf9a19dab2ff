"""Issue 9 (hardening), paths and names: one test group per finding.

* finding 1 (symlinks lead reads and writes outside the roots): ``test_finding1_*``
* finding 2 (a non-UTF-8 name or a job store error silently drops other series): ``test_finding2_*``
* finding 5 (two series publishing under one output name): ``test_finding5_*``
* low items (output-lookalike folders ignored without a word; control characters forging log lines): ``test_low_*``
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import nibabel as nib
import pytest
from watch_helpers import CountingSegmenter, error_files, results, tree, wait_for, write_series

from edgeseg.runtime.watch.service import Watcher
from edgeseg.runtime.watch.store import DONE, JobStore


PHANTOM_PAR = Path(nib.__file__).parent / "tests" / "data" / "phantom_EPI_asc_CLEAR_2_1.PAR"


def manifest(result: Path) -> dict:
    return json.loads((result / "manifest.json").read_text())


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``folder`` (links not followed) with size and mtime: proof that nothing was written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def link_warnings(caplog: pytest.LogCaptureFixture, link: Path) -> int:
    return sum(1 for r in caplog.records
               if r.levelno >= logging.WARNING and f"{link} is a symbolic link" in r.getMessage())


def age(*paths: Path, seconds: float = 3600) -> None:
    """Back-date files so that they are complete at the first look of the same poll (deterministic order)."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


# ------------------------------------------------------------------------------------------------- finding 1


def test_finding1_links_created_live_are_never_followed(start_watcher, segmenter, roots, tmp_path, caplog) -> None:
    """Folder links made inside a root while the watcher runs (to a series outside, to an ordinary tree, to the
    root itself) are not followed: nothing outside is read or written, no series runs twice, each link is logged
    once although the roots are rescanned again and again."""
    caplog.set_level(logging.INFO)
    outside_series = tmp_path / "outside" / "exam"
    write_series(outside_series, 4, description="outside")
    ordinary = tmp_path / "etc"
    (ordinary / "sub").mkdir(parents=True)
    (ordinary / "passwd").write_text("root:x:0:0\n")
    (ordinary / "sub" / "hosts").write_text("127.0.0.1 localhost\n")
    before_outside, before_ordinary = snapshot(tmp_path / "outside"), snapshot(ordinary)

    w = start_watcher(rescan_interval_s=0.2)
    os.symlink(outside_series, roots / "x")
    os.symlink(ordinary, roots / "etc")
    os.symlink(".", roots / "loop")
    write_series(roots / "real", 4, description="real")
    assert wait_for(lambda: len(results(roots)) == 1)
    time.sleep(1.5)  # several rescans and polls
    assert w.wait_idle(10)

    assert snapshot(tmp_path / "outside") == before_outside and snapshot(ordinary) == before_ordinary
    assert list(segmenter.calls.values()) == [1] and all("real" in k for k in segmenter.calls)
    assert not [r.key for r in w.store.rows() if not r.key.startswith(str(roots / "real"))]
    assert results(tmp_path / "outside") == [] and error_files(tmp_path) == []
    for link in (roots / "x", roots / "etc", roots / "loop"):
        assert link_warnings(caplog, link) == 1, link


def test_finding1_file_link_inside_a_series_is_not_read(start_watcher, segmenter, roots, tmp_path, caplog) -> None:
    """A slice linked in from outside the root is not part of the series (its pixels, patient attributes, preview
    and DICOM-SEG would otherwise be published inside the root)."""
    caplog.set_level(logging.INFO)
    files = write_series(tmp_path / "src", 6)
    (roots / "exam").mkdir()
    for f in files[:5]:
        shutil.copyfile(f, roots / "exam" / f.name)
    w = start_watcher()
    os.symlink(files[5], roots / "exam" / "slice6")
    assert wait_for(lambda: len(results(roots)) == 1, timeout=20)
    assert w.wait_idle(10)
    inputs = [rel for rel, _, _ in manifest(results(roots)[0])["inputs"]]
    assert len(inputs) == 5 and "slice6" not in inputs
    assert link_warnings(caplog, roots / "exam" / "slice6") == 1


def test_finding1_links_present_at_start_follow_the_same_policy(make_config, roots, tmp_path, caplog, real_mri) -> None:
    """At start (the initial scan) the rule and the log line are the same as live: links skipped, logged once."""
    caplog.set_level(logging.INFO)
    outside = tmp_path / "outside"
    write_series(outside / "exam", 4, description="outside")
    shutil.copyfile(real_mri, outside / "case.nii.gz")
    os.symlink(outside / "exam", roots / "folder_link")
    os.symlink(outside / "case.nii.gz", roots / "file_link.nii.gz")
    shutil.copyfile(real_mri, roots / "real.nii.gz")
    before = snapshot(outside)
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 0
    assert list(seg.calls) == [str(roots / "real.nii.gz")]
    assert snapshot(outside) == before
    assert link_warnings(caplog, roots / "folder_link") == 1
    assert link_warnings(caplog, roots / "file_link.nii.gz") == 1


def test_finding1_par_whose_rec_is_a_link_is_not_read(make_config, roots, tmp_path) -> None:
    """nibabel opens a PAR's REC by name: a REC linked in from outside makes the pair unreadable (error file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(PHANTOM_PAR, roots / "pr.PAR")
    shutil.copyfile(PHANTOM_PAR.with_suffix(".REC"), outside / "pr.REC")
    os.symlink(outside / "pr.REC", roots / "pr.REC")
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 1
    assert not seg.calls
    (err,) = error_files(roots)
    assert ".REC" in json.loads(err.read_text())["error"]


def test_finding1_discover_series_skips_links(tmp_path, real_mri, caplog) -> None:
    """The reader's folder discovery applies the same rule (one function, edgeseg.runtime.read.paths)."""
    from edgeseg.runtime.read import discover_series

    caplog.set_level(logging.INFO)
    folder, outside = tmp_path / "in", tmp_path / "outside"
    folder.mkdir()
    write_series(outside / "exam", 4)
    shutil.copyfile(real_mri, outside / "other.nii.gz")
    shutil.copyfile(real_mri, folder / "real.nii.gz")
    os.symlink(outside / "exam", folder / "exam_link")
    os.symlink(outside / "other.nii.gz", folder / "other.nii.gz")
    os.symlink(".", folder / "loop")
    shutil.copyfile(PHANTOM_PAR, folder / "pr.PAR")
    shutil.copyfile(PHANTOM_PAR.with_suffix(".REC"), outside / "pr.REC")
    os.symlink(outside / "pr.REC", folder / "pr.REC")
    refs = discover_series(folder)
    assert [r.source for r in refs] == [folder / "real.nii.gz"]
    assert link_warnings(caplog, folder / "exam_link") == 1


def test_finding1_inside_roots_is_the_one_rule(tmp_path) -> None:
    from edgeseg.runtime.read import inside_roots
    from edgeseg.runtime.read.paths import outside_reason

    real_root = tmp_path / "data" / "incoming"
    (real_root / "exam").mkdir(parents=True)
    (real_root / "exam" / "im1").write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x")
    root = tmp_path / "incoming"  # the root itself may be a link: roots are resolved
    os.symlink(real_root, root)
    os.symlink(outside, real_root / "out")
    os.symlink(real_root / "exam", real_root / "alias")  # inside the root: skipped too (no alias keys)
    os.symlink(outside / "secret", real_root / "exam" / "slice")
    os.symlink(tmp_path / "missing", real_root / "dangling")
    roots = [root]
    assert inside_roots(root, roots) and inside_roots(root / "exam", roots)
    assert inside_roots(root / "exam" / "im1", roots)
    assert inside_roots(root / "exam" / "not_yet_there", roots)  # a deleted path can still be forgotten
    for p in ("out", "out/secret", "alias", "alias/im1", "exam/slice", "dangling"):
        assert not inside_roots(root / p, roots), p
    assert "OUTSIDE" in outside_reason(root / "out" / "secret", roots)
    assert "inside" in outside_reason(root / "alias", roots)
    assert not inside_roots(tmp_path / "other", roots)


# ------------------------------------------------------------------------------------------------- finding 2


def test_finding2_latin1_names_do_not_drop_other_series(make_config, roots, real_mri, caplog) -> None:
    """A file and a folder whose names are Latin-1 bytes (not UTF-8) are valid series keys, and the series that
    completes in the same poll is processed too (before: UnicodeEncodeError in the store, every other series of
    that poll lost, exit code 0)."""
    caplog.set_level(logging.INFO)
    broot = os.fsencode(roots)
    cafe = Path(os.fsdecode(broot + b"/caf\xe9.nii.gz"))
    shutil.copyfile(real_mri, cafe)
    good = roots / "good.nii.gz"
    shutil.copyfile(real_mri, good)
    age(cafe, good)
    mueller = Path(os.fsdecode(broot + b"/M\xfcller"))
    write_series(mueller, 4, description="t1")
    seg = CountingSegmenter()
    w = Watcher(make_config(), seg, once=True, settle_s=0.1)
    assert w.run() == 0
    assert sorted(seg.calls.values()) == [1, 1, 1]
    assert {str(cafe), str(good)} <= set(seg.calls)
    assert len(results(roots)) == 3 and error_files(roots) == []
    with JobStore(make_config().store_path) as store:
        assert store.get(str(cafe)).state == DONE and store.get(str(good)).state == DONE
        (row,) = [r for r in store.rows() if r.series_uid]
        assert row.state == DONE and row.folder_path == mueller and row.output_dir.parent == mueller
    assert not any("Logging error" in r.getMessage() for r in caplog.records)


def _failing_mark_complete(monkeypatch: pytest.MonkeyPatch, part: str, times: int) -> list[str]:
    """JobStore.mark_complete raises "database or disk is full" for keys containing ``part``, ``times`` times."""
    original = JobStore.mark_complete
    failed: list[str] = []

    def mark_complete(self: JobStore, key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if part in key and len(failed) < times:
            failed.append(key)
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(JobStore, "mark_complete", mark_complete)
    return failed


def test_finding2_store_error_requeues_that_series_only(make_config, roots, real_mri, monkeypatch, caplog) -> None:
    """A job store error while dispatching one series re-queues it (logged) and it runs at a later poll; the
    series completed in the same poll run as usual."""
    caplog.set_level(logging.INFO)
    a, b = roots / "a.nii.gz", roots / "b.nii.gz"
    shutil.copyfile(real_mri, a)
    shutil.copyfile(real_mri, b)
    age(a, b)
    failed = _failing_mark_complete(monkeypatch, "a.nii.gz", times=2)
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 0
    assert failed == [str(a), str(a)]
    assert seg.calls == {str(a): 1, str(b): 1}
    assert len(results(roots)) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "database or disk is full" in r.getMessage()]
    assert len(errors) == 2 and all(str(a) in r.getMessage() for r in errors)


def test_finding2_persistent_store_error_is_not_silent(make_config, roots, real_mri, monkeypatch) -> None:
    """With --once a store error that does not go away ends the run with exit code 1 (not 0 with a series lost);
    the series runs at the next start."""
    a, b = roots / "a.nii.gz", roots / "b.nii.gz"
    shutil.copyfile(real_mri, a)
    shutil.copyfile(real_mri, b)
    age(a, b)
    _failing_mark_complete(monkeypatch, "a.nii.gz", times=1000)
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 1
    assert seg.calls == {str(b): 1}
    monkeypatch.undo()
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 0
    assert seg.calls == {str(a): 1}
    assert len(results(roots)) == 2


def test_finding2_store_keys_are_reversible(tmp_path) -> None:
    from edgeseg.runtime.read.paths import from_fs_text, fs_text

    names = [os.fsdecode(b"/in/caf\xe9.nii.gz"), os.fsdecode(b"/in/M\xfcller/a\\x41\xff::1.2.3"), "/in/ok é.nii",
             "/in/back\\slash"]
    for name in names:
        assert from_fs_text(fs_text(name)) == name and fs_text(fs_text(name)) == fs_text(name)
        fs_text(name).encode("utf-8")
    with JobStore(tmp_path / "jobs.sqlite") as store:
        key = names[1]
        store.discover(key, "dicom", Path(os.fsdecode(b"/in/M\xfcller")), "t1_123", "1.2.3", os.fsdecode(b"d\xe9"))
        store.mark_complete(key, "dicom", Path(os.fsdecode(b"/in/M\xfcller")), "t1_123", "fp", 3)
        store.mark_running(key)
        store.mark_done(key, Path(os.fsdecode(b"/in/M\xfcller/t1_123.edgeseg")), 1.0)
        row = store.get(key)
        assert row.state == DONE and row.folder_path == Path(os.fsdecode(b"/in/M\xfcller"))
        assert row.output_dir == Path(os.fsdecode(b"/in/M\xfcller/t1_123.edgeseg"))
        assert store.get(names[0]) is None


# ------------------------------------------------------------------------------------------------- finding 5


def test_finding5_similar_file_names_get_their_own_results(make_config, roots, real_mri) -> None:
    """``T1 post.nii.gz``/``T1_post.nii.gz`` and ``a.nii``/``a.nii.gz`` used to publish to one folder each, the
    second replacing the first while both were marked done."""
    img = nib.load(str(real_mri))
    for name in ("T1 post.nii.gz", "T1_post.nii.gz", "a.nii.gz"):
        shutil.copyfile(real_mri, roots / name)
    nib.save(img, str(roots / "a.nii"))
    seg = CountingSegmenter()
    w = Watcher(make_config(), seg, once=True, settle_s=0.1)
    assert w.run() == 0
    found = results(roots)
    assert len(found) == 4
    assert sorted(manifest(r)["series_key"] for r in found) == sorted(str(roots / n) for n in (
        "T1 post.nii.gz", "T1_post.nii.gz", "a.nii", "a.nii.gz"))
    with JobStore(make_config().store_path) as store:
        rows = store.rows()
        assert len(rows) == 4 and all(r.state == DONE for r in rows)
        assert len({r.output_path for r in rows}) == 4 and len({r.name for r in rows}) == 4
    assert (roots / "a.edgeseg").is_dir() and (roots / "T1_post.edgeseg").is_dir()  # the plain names stay plain


def test_finding5_dicom_series_with_the_same_name_do_not_replace_each_other(make_config, roots) -> None:
    """Two DICOM series in one folder with the same description and UIDs ending in the same 8 digits."""
    write_series(roots / "exam", 4, description="t1", uid="1.2.826.0.1.3680043.1.11112222", seed=1)
    write_series(roots / "exam", 5, description="t1", uid="1.2.826.0.1.3680043.2.11112222", seed=2)
    seg = CountingSegmenter()
    assert Watcher(make_config(), seg, once=True, settle_s=0.1).run() == 0
    assert sorted(seg.calls.values()) == [1, 1]
    found = results(roots)
    assert len(found) == 2
    assert sorted(len(manifest(r)["inputs"]) for r in found) == [4, 5]
    assert len({manifest(r)["series_key"] for r in found}) == 2


def test_finding5_names_are_unique_per_file_name() -> None:
    from edgeseg.runtime.naming import nifti_name

    names = ["T1 post.nii.gz", "T1_post.nii.gz", "T1-post.nii.gz", "a.nii", "a.nii.gz", "a.NII.GZ", "a.PAR", "a.par",
             "a_nii.nii.gz", "a_nii.nii", "x" * 130 + "1.nii.gz", "x" * 130 + "2.nii.gz", "é.nii.gz", "e.nii.gz"]
    got = [nifti_name(n) for n in names]
    assert len(set(got)) == len(got), got
    assert nifti_name("case.nii.gz") == "case" and nifti_name("T1_post.nii.gz") == "T1_post"
    assert nifti_name("T1 post.nii.gz") == nifti_name("T1 post.nii.gz")  # stable


def test_finding5_a_result_of_another_series_is_never_replaced(tmp_path) -> None:
    from edgeseg.runtime.write.atomic import ResultFolder

    def publish(owner: str, text: str) -> Path:
        with ResultFolder(tmp_path, "t1", owner=owner) as folder:
            (folder.path / "manifest.json").write_text(json.dumps({"series_key": owner}))
            (folder.path / "what.txt").write_text(text)
        return folder.final_path

    first = publish("/in/exam::1.2.3.11112222", "first")
    second = publish("/in/exam::1.2.4.11112222", "second")
    assert first == tmp_path / "t1.edgeseg" and second != first and second.name.startswith("t1_")
    assert (first / "what.txt").read_text() == "first" and (second / "what.txt").read_text() == "second"
    assert publish("/in/exam::1.2.4.11112222", "second again") == second  # deterministic, replaces its own
    assert publish("/in/exam::1.2.3.11112222", "first again") == first
    assert (first / "what.txt").read_text() == "first again"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


# ---------------------------------------------------------------------------------------------------- low


def test_low_series_in_output_lookalike_folder_is_logged_once(start_watcher, segmenter, roots, caplog) -> None:
    caplog.set_level(logging.INFO)
    write_series(roots / "study.edgeseg", 4)
    w = start_watcher(rescan_interval_s=0.2)
    write_series(roots / "real", 4)
    assert wait_for(lambda: len(results(roots)) == 2)  # our own result + the lookalike folder itself
    time.sleep(1.0)  # rescans
    assert w.wait_idle(10)
    assert sum(segmenter.calls.values()) == 1
    notes = [r for r in caplog.records if "named like an edgeseg output" in r.getMessage()]
    assert len(notes) == 1 and "study.edgeseg" in notes[0].getMessage()  # our own result folder is not reported
    assert "real" in tree(roots) and (roots / "study.edgeseg").is_dir()


def test_low_log_lines_cannot_be_forged(tmp_path) -> None:
    """CR/LF and ANSI escapes (from SeriesDescription, PatientName, file names) never start a log line of their
    own; undecodable bytes of a file name are written as \\xNN instead of breaking the log file."""
    from edgeseg.cli import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    log_file = tmp_path / "watch.log"
    try:
        configure_logging(0, str(log_file))
        log = logging.getLogger("edgeseg.test")
        desc = "T1\r\n2026-01-01T00:00:00 ERROR   edgeseg: forged line\x1b[2J\x1b[31m"
        log.info("new series: description=%s file=%s", desc, os.fsdecode(b"caf\xe9.nii.gz"))
        try:
            raise ValueError("bad\nERROR forged from an exception")
        except ValueError:
            log.exception("failed: %s", "x\u2028y")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = log_file.read_text(encoding="utf-8").splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 2, lines
    assert "\x1b" not in "".join(lines) and "\r" not in "".join(lines)
    assert "T1\\r\\n2026-01-01T00:00:00 ERROR" in records[0] and "\\x1b[2J" in records[0]
    assert "caf\\xe9.nii.gz" in records[0]
    assert any("ERROR forged from an exception" in line and line.startswith("  ") for line in lines)
