"""The unexpected-skip gate of tests/conftest.py: a skip whose reason is not in EXPECTED_SKIPS fails the run.

Each case runs pytest in a subprocess on a throwaway folder whose conftest.py is a copy of tests/conftest.py, so
the real hooks are what is tested (and a broken gate makes these tests fail).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CONFTEST = TESTS / "conftest.py"


def _expected_skips() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("_edgeseg_root_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPECTED_SKIPS


def _run(tmp_path: Path, tests: str, *, ci: bool = False) -> subprocess.CompletedProcess[str]:
    """Run pytest on the test file ``tests`` (plus one file with a passing test) beside a copy of tests/conftest.py;
    return the finished process."""
    shutil.copyfile(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # no ini file of a parent folder applies
    (tmp_path / "test_gate_sample.py").write_text(textwrap.dedent(tests), encoding="utf-8")
    (tmp_path / "test_gate_other.py").write_text("def test_other_passes():\n    pass\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CI"}
    if ci:
        env["CI"] = "true"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_gate_sample.py",
           "test_gate_other.py"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


EXPECTED_ONLY = """
    import pytest

    def test_passes():
        pass

    @pytest.mark.skipif(True, reason="needs a non-root POSIX user")
    def test_expected_mark_skip():
        pass

    def test_expected_call_skip():
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")

    @pytest.mark.xfail(reason="an expected failure is not a skip")
    def test_xfail():
        assert False
"""

UNEXPECTED = """
    import pytest

    def test_passes():
        pass

    @pytest.mark.skipif(True, reason="needs a non-root POSIX user")
    def test_expected_skip():
        pass

    def test_unexpected_skip():
        pytest.skip("reference data not found")

    @pytest.fixture
    def data():
        pytest.skip("fixture data missing")

    def test_unexpected_fixture_skip(data):
        pass
"""


def test_expected_skips_pass(tmp_path: Path) -> None:
    proc = _run(tmp_path, EXPECTED_ONLY, ci=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 skipped" in out and "UNEXPECTED" not in out


@pytest.mark.parametrize("ci", [False, True], ids=["local", "CI=true"])
def test_an_unexpected_skip_fails_the_run_and_names_the_test(tmp_path: Path, ci: bool) -> None:
    proc = _run(tmp_path, UNEXPECTED, ci=ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "UNEXPECTED SKIPS (the run fails)" in out
    assert "UNEXPECTED SKIP test_gate_sample.py::test_unexpected_skip: reference data not found" in out
    assert "UNEXPECTED SKIP test_gate_sample.py::test_unexpected_fixture_skip: fixture data missing" in out
    assert "test_expected_skip:" not in out.split("UNEXPECTED SKIPS")[1]  # the allowed one is not listed
    assert "2 test(s) skipped for a reason not in EXPECTED_SKIPS" in out
    assert ("(CI=true)" in out) == ci


def test_a_module_skipped_at_import_fails_the_run(tmp_path: Path) -> None:
    proc = _run(tmp_path, """
        import pytest

        pytest.importorskip("edgeseg_no_such_module_xyz")

        def test_never_runs():
            pass
    """)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 passed, 1 skipped" in out, out
    assert "UNEXPECTED SKIP test_gate_sample.py: could not import 'edgeseg_no_such_module_xyz'" in out


def test_a_failure_still_fails_with_the_failure_status(tmp_path: Path) -> None:
    proc = _run(tmp_path, """
        import pytest

        def test_fails():
            assert False

        def test_unexpected_skip():
            pytest.skip("why not")
    """)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 failed" in out and "UNEXPECTED SKIP" in out, out


def test_every_expected_skip_reason_is_still_in_a_test() -> None:
    """An allow-list entry whose skip was removed from the tests would silently allow a later, different skip."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in TESTS.rglob("*.py")
                        if p.resolve() not in (CONFTEST, Path(__file__).resolve()))
    expected = _expected_skips()
    assert expected
    stale = [reason for reason in expected if reason not in sources]
    assert not stale, f"EXPECTED_SKIPS entries no test skips with any more (remove them from tests/conftest.py): " \
                      f"{stale}"
