"""The one atomic JSON writer (``runtime/write/atomic.write_json_atomic``): the previous file or the new one, never a
part, and no temporary left behind whatever fails. Every JSON file edgeseg replaces in place goes through it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeseg.errors import OutputError
from edgeseg.runtime.write import atomic
from edgeseg.runtime.write.atomic import write_error_file, write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_and_replaces_without_leaving_a_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert write_json_atomic(path, {"a": 1, "name": "Müller"}) == path
    write_json_atomic(path, {"b": [1, 2]}, indent=None, sort_keys=True)
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": [1, 2]}
    assert path.read_text(encoding="utf-8").endswith("\n")
    assert _names(tmp_path) == ["state.json"]


def test_non_unicode_names_are_written_as_escapes(tmp_path: Path) -> None:
    name = b"T1 \xe9".decode("utf-8", "surrogateescape")  # a Latin-1 file name on Linux
    write_json_atomic(tmp_path / "x.json", {"name": name, "other": "é"})
    text = (tmp_path / "x.json").read_text(encoding="utf-8")
    assert "\\udce9" in text and json.loads(text)["name"] == name


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk full", "interrupt"])
def test_any_failure_keeps_the_old_file_and_removes_the_temporary(
        where: str, exc: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "watcher.json"
    write_json_atomic(path, {"old": True})

    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    if where == "write":
        real_open = open

        class Failing:
            def __init__(self, fh: object) -> None:
                self.fh = fh

            def __enter__(self) -> Failing:
                return self

            def __exit__(self, *args: object) -> None:
                self.fh.close()  # type: ignore[attr-defined]

            def write(self, data: bytes) -> None:
                self.fh.write(data[:10])  # type: ignore[attr-defined]
                raise exc

        monkeypatch.setattr("builtins.open", lambda *a, **k: Failing(real_open(*a, **k)))
    else:
        monkeypatch.setattr(atomic.os, where, fail)
    with pytest.raises(type(exc)):
        write_json_atomic(path, {"new": True})
    monkeypatch.undo()
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": True}
    assert _names(tmp_path) == ["watcher.json"]


def test_a_payload_that_is_not_json_creates_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"x": object()})
    assert _names(tmp_path) == []
    write_json_atomic(tmp_path / "x.json", {"x": Path("/a")}, default=str)
    assert json.loads((tmp_path / "x.json").read_text()) == {"x": "/a"}


def test_error_file_turns_a_file_system_error_into_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="write"):
        write_error_file(tmp_path / "gone", "series", RuntimeError("boom"), "do this")
    path = write_error_file(tmp_path, "series", RuntimeError("boom"), "do this")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["kind"] == "internal"  # an error outside the family is a bug, as in the job store
    assert _names(tmp_path) == [path.name]


def test_latency_table_leaves_no_temporary_when_saving_fails(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.runtime.plan import LatencyTable

    table = LatencyTable(tmp_path / "latency.json")
    table.put("b", "p", "int8", "CPU", None, 0.5)
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError):
        table.put("b", "p", "fp32", "CPU", None, 1.0)
    assert _names(tmp_path) == ["latency.json"]


def test_no_other_json_writer_replaces_files_by_itself() -> None:
    """``os.replace`` of a file appears only in the atomic writer (and the job store's creation of its SQLite
    file, which is not JSON); every other JSON file replaced in place is written by ``write_json_atomic``."""
    allowed = {REPO / "runtime" / "write" / "atomic.py", REPO / "runtime" / "watch" / "store.py"}
    offenders = []
    for folder in ("edgeseg", "bundle", "export", "runtime"):
        for path in (REPO / folder).rglob("*.py"):
            if path not in allowed and "os.replace(" in path.read_text("utf-8"):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
