"""The documentation: generated pages are what their generator writes from the code now, every relative link in
README.md and docs/*.md reaches a file of the repository, the README stays a short entry page, and its test
command is the one script CI runs (tools/run_tests.sh), which fails on pytest's "no tests collected".
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
RUN_TESTS = REPO / "tools" / "run_tests.sh"
TEST_COMMAND = "bash tools/run_tests.sh"

sys.path.insert(0, str(REPO / "tools"))

import gen_docs  # noqa: E402


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# ---------------------------------------------------------------------------------------------- generated pages


@pytest.mark.parametrize("name", sorted(gen_docs.PAGES))
def test_generated_page_is_up_to_date(name: str) -> None:
    rel, generate = gen_docs.PAGES[name]
    committed = (REPO / rel).read_text(encoding="utf-8") if (REPO / rel).is_file() else ""
    assert committed == generate(), f"{rel} differs from the code: run python tools/gen_docs.py {name} and commit it"


def test_exit_codes_page_lists_every_error_class_with_kind_code_and_remedy() -> None:
    from edgeseg import errors

    text = (REPO / gen_docs.PAGES["exit-codes"][0]).read_text(encoding="utf-8")
    for cls in errors.error_classes():
        row = next((line for line in text.splitlines() if f"| `{cls.__name__}` |" in line), None)
        assert row is not None, cls.__name__
        assert row.startswith(f"| {cls.exit_code} | `{cls.kind}` |")
        assert gen_docs._inline(errors.remedy_for(cls)) in row
    for code in (errors.EXIT_OK, errors.EXIT_SOME_FAILED, errors.EXIT_INTERRUPTED):
        assert f"\n| {code} | – | – |" in text


def test_gen_docs_check_reports_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gen_docs, "REPO", tmp_path)
    assert gen_docs.main(["exit-codes", "--check"]) == 1  # missing
    assert "docs/exit-codes.md" in capsys.readouterr().err
    assert gen_docs.main(["exit-codes"]) == 0
    assert gen_docs.main(["exit-codes", "--check"]) == 0
    page = tmp_path / "docs" / "exit-codes.md"
    page.write_text(page.read_text(encoding="utf-8").replace("| 16 |", "| 61 |"), encoding="utf-8")
    assert gen_docs.main(["all", "--check"]) == 1


# ------------------------------------------------------------------------------------------------------- links

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page (code blocks and inline code left out), anchors removed."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for match in _LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, ... and anchors inside the page
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_finder_finds_links() -> None:
    assert _relative_links(README), "README.md links into docs/"


def test_every_relative_link_reaches_a_file_of_the_repository() -> None:
    broken: list[str] = []
    for page in _pages():
        for target in _relative_links(page):
            path = (page.parent / target).resolve()
            if not path.exists() or not path.is_relative_to(REPO):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_link_finder_on_a_sample(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("[a](docs/a.md) [b](https://x.org/b.md) [c](#anchor) ![i](img.png) [d](e.md#part)\n"
                    "`[not](a link)`\n```\n[nor](this.md)\n```\n", encoding="utf-8")
    assert _relative_links(page) == ["docs/a.md", "img.png", "e.md"]


# ------------------------------------------------------------------------------------------------------ README


def test_readme_is_an_entry_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150): move the details into docs/"
    assert (DOCS / "index.md").is_file() and "docs/index.md" in "\n".join(lines)


def test_readme_test_command_is_the_script_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    assert f"\n{TEST_COMMAND}\n" in readme, f"the README's test command is `{TEST_COMMAND}`"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == f'exec {TEST_COMMAND} "$@"', ".ci/run runs exactly the README's test command"
    script = RUN_TESTS.read_text(encoding="utf-8")
    assert "set -euo pipefail" in script and "apt-get install" in script
    assert os.access(RUN_TESTS, os.X_OK)


# ------------------------------------------------------------------------------- tools/run_tests.sh, with stubs


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
    path.chmod(0o755)


def _run_script(tmp_path: Path, *, pytest_status: int, have_dcmtk: bool, uid: int) -> tuple[int, str, str]:
    """Run a copy of tools/run_tests.sh in a folder of its own with every program it calls stubbed (PATH holds
    only the stubs and the few shell utilities it needs); return (exit status, stderr, the stubs' call log)."""
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    shutil.copyfile(RUN_TESTS, root / "tools" / "run_tests.sh")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("bash", "dirname", "mkdir", "chmod"):
        found = shutil.which(tool)
        assert found, tool
        (stubs / tool).symlink_to(found)
    record = f'echo "$(basename "$0") $*" >> {log}\n'
    _stub(stubs, "basename", 'echo "${1##*/}"\n')
    _stub(stubs, "id", f"echo {uid}\n")
    _stub(stubs, "env", record.replace("$(basename \"$0\")", "env") + 'shift; exec "$@"\n')
    _stub(stubs, "apt-get", record.replace("$(basename \"$0\")", "apt-get"))
    _stub(stubs, "sudo", record.replace("$(basename \"$0\")", "sudo") + 'exec "$@"\n')
    _stub(stubs, "Orthanc", "")
    if have_dcmtk:
        for tool in ("dcmcjpeg", "storescp", "echoscu", "chromium"):
            _stub(stubs, tool, "")
    venv_python = f'echo "venv-python $*" >> {log}\nexit {pytest_status}\n'
    _stub(stubs, "python3", f"""echo "python3 $*" >> {log}
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    printf '#!/bin/bash\\necho "pip $*" >> {log}\\n' > "$3/bin/pip"
    printf '#!/bin/bash\\n%s' '{venv_python}' > "$3/bin/python"
    chmod +x "$3/bin/pip" "$3/bin/python"
fi
exit 0
""")
    env = {"PATH": str(stubs), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(root / "tools" / "run_tests.sh"), "-k", "x"], env=env, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stderr, log.read_text(encoding="utf-8") if log.exists() else ""


@pytest.mark.parametrize("pytest_status", [0, 1, 5])
def test_run_tests_exits_with_pytest_status_and_never_passes_without_tests(tmp_path: Path,
                                                                            pytest_status: int) -> None:
    status, err, calls = _run_script(tmp_path, pytest_status=pytest_status, have_dcmtk=True, uid=1000)
    assert status == pytest_status, err
    assert "python3 -m venv .venv" in calls and 'pip install -q -e .[test]' in calls
    assert "venv-python -m pytest -q -k x" in calls  # the script's arguments reach pytest
    assert "apt-get" not in calls  # everything is installed: nothing to install
    assert ("collected no tests" in err) == (pytest_status == 5)


@pytest.mark.parametrize("uid, via_sudo", [(0, False), (1000, True)], ids=["root", "user"])
def test_run_tests_installs_missing_debian_packages(tmp_path: Path, uid: int, via_sudo: bool) -> None:
    status, err, calls = _run_script(tmp_path, pytest_status=0, have_dcmtk=False, uid=uid)
    assert status == 0, err
    lines = calls.splitlines()
    install = next(line for line in lines if line.startswith("apt-get install"))
    assert "-y" in install.split() and "dcmtk" in install.split() and "chromium" in install.split()
    assert any(line.startswith("env DEBIAN_FRONTEND=noninteractive apt-get install") for line in lines)
    assert lines.index("apt-get update -qq") < lines.index(install)
    assert any(line.startswith("sudo ") for line in lines) == via_sudo
