"""Shared fixtures: where the real data lives, the helpers package on the path, and the unexpected-skip gate.

Every file the tests read is in the repository: the real MRI and its label names ship with the package
(``edgeseg/demo/mri``), its reference segmentation and the part split are test fixtures
(``tests/fixtures/total_mr_example``; source and licence in its SOURCE.md). Nothing outside the clone is read.
"""
from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGED_MRI_DIR = REPO / "edgeseg" / "demo" / "mri"
PACKAGED_MRI = PACKAGED_MRI_DIR / "example_mr_sm.nii.gz"
PACKAGED_LABELS = PACKAGED_MRI_DIR / "total_mr_labels.json"
FIXTURE_DATA = REPO / "tests" / "fixtures" / "total_mr_example"
REFERENCE_SEG = FIXTURE_DATA / "example_seg_mr.nii.gz"
PARTS_JSON = FIXTURE_DATA / "total_mr_parts.json"
SMALL_MODEL = REPO / "tests" / "fixtures" / "models" / "Dataset900_EdgesegDemoMR"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def committed_file(path: Path) -> Path:
    """``path`` if it exists; otherwise fail (it is committed: a missing one is a broken checkout, not a skip)."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: it is committed to the repository (restore it with git checkout)",
                    pytrace=False)
    return path


@pytest.fixture(autouse=True)
def _restore_logging():  # noqa: ANN202 - a generator fixture
    """``edgeseg.cli.main`` configures the root logger (a file handler too): put pytest's handlers back after each
    test that ran it."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def real_mri() -> Path:
    """The real abdominal MRI (117x91x20 @ 3 mm, int16, axis codes L,P,S): the packaged demo copy."""
    return committed_file(PACKAGED_MRI)


@pytest.fixture(scope="session")
def real_labels() -> Path:
    """TotalSegmentator's total_mr segmentation of ``real_mri`` (same grid, uint8), a committed test fixture."""
    return committed_file(REFERENCE_SEG)


@pytest.fixture(scope="session")
def total_mr_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with total_mr_labels.json (packaged) and total_mr_parts.json (fixture), as the test-model
    generators' ``data_dir`` expects (the two files live apart in the repository)."""
    import shutil

    folder = tmp_path_factory.mktemp("total_mr_data")
    for path in (PACKAGED_LABELS, PARTS_JSON):
        shutil.copyfile(committed_file(path), folder / path.name)
    return folder


@pytest.fixture(scope="session")
def small_model() -> Path:
    """The committed small real nnU-Net v2 model folder (trainer folder)."""
    folders = sorted(SMALL_MODEL.glob("*__nnUNetPlans__3d_fullres"))
    if not folders:
        pytest.fail(f"the committed small model is missing under {SMALL_MODEL}", pytrace=False)
    return folders[0]


# --------------------------------------------------------------------------------------------------------------
# Every DICOM-SEG a test writes is valid (issue 11): after each test that had a tmp_path, each SEG left there passes
# dciodvfy, and each result folder's seg.dcm matches its seg.nii.gz in dcmqi and highdicom, voxel for voxel in world
# coordinates (tests/helpers/seg_validation.py). A failure is reported as an error in that test's teardown.


@pytest.fixture(autouse=True)
def _every_dicom_seg_is_valid(request: pytest.FixtureRequest):  # noqa: ANN202 - a generator fixture
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if tmp is not None and Path(tmp).is_dir():
        from helpers.seg_validation import validate_written_segs

        validate_written_segs(tmp)


# --------------------------------------------------------------------------------------------------------------
# Unexpected-skip gate: a skip whose reason is not listed here fails the run (exit status 1), locally and in CI.
# A skip hides a test that did not run; only the reasons below are legitimate. A missing test extra (torch,
# nnunetv2, ...) is NOT: install it with `pip install -e ".[test]"`.

#: substrings of the skip reasons that are expected; each says why the skip is legitimate
EXPECTED_SKIPS: tuple[str, ...] = (
    # tests/installer/test_frozen_build.py: builds a clean venv + PyInstaller app (minutes); opt-in with
    # EDGESEG_BUILD_FROZEN=1, and always on when CI=true (so it never skips in CI)
    "builds the frozen app (minutes)",
    # tests/runtime/test_write.py: root ignores folder permissions, so a read-only folder cannot be simulated
    "needs a non-root POSIX user",
    # tests/installer/test_frozen_build.py: install.sh is the Linux installer; not run on Windows
    "install.sh is the Linux installer",
    # tests/installer/test_service_scripts.py: the Linux service scripts need bash; not on Windows
    "the Linux service scripts need bash",
    # tests/installer/test_service_scripts.py: a system tool (package systemd), not pip-installable; the unit's
    # content is still checked by the other service-script tests
    "systemd-analyze is not installed here",
)


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _is_expected(reason: str) -> bool:
    return any(expected in reason for expected in EXPECTED_SKIPS)


_UNEXPECTED: list[tuple[str, str]] = []  # (node id, reason) of each unexpected skip of this session


def _record(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not _is_expected(reason):
            _UNEXPECTED.append((report.nodeid or ".", reason))


def pytest_configure(config: pytest.Config) -> None:
    _UNEXPECTED.clear()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record(report)  # a whole module or folder skipped at import (pytest.importorskip at module level)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _UNEXPECTED and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not _UNEXPECTED:
        return
    terminalreporter.section("UNEXPECTED SKIPS (the run fails)", sep="=", red=True, bold=True)
    for nodeid, reason in _UNEXPECTED:
        terminalreporter.line(f"UNEXPECTED SKIP {nodeid}: {reason}", red=True)
    ci = " (CI=true)" if os.environ.get("CI", "").lower() == "true" else ""
    terminalreporter.line(
        f"{len(_UNEXPECTED)} test(s) skipped for a reason not in EXPECTED_SKIPS of tests/conftest.py{ci}: make them "
        "run (missing test extra: pip install -e \".[test]\"), or, if the skip is truly legitimate, add its reason "
        "there with a comment saying why.", red=True)


@pytest.fixture
def unpacked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every byte any gzip reader in this process hands out (nibabel's reads and ISA-L's ``IGzipFile``, a
    ``gzip.GzipFile``, included): the tests that bound how much of a stream is unpacked."""
    counts: list[int] = []
    original = gzip.GzipFile.read

    def counting_read(self: gzip.GzipFile, size: int = -1) -> bytes:
        data = original(self, size)
        counts.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    return counts
