"""DICOM UIDs are named, not spelled out: code says ``pydicom.uid.MRImageStorage`` or
``pynetdicom.sop_class.Verification``, never the number. A number in the code is unreadable and a typo in it is
silent; the libraries' names are checked against the standard's registry."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the folders of non-test code (tests/ uses the names too, but may spell a UID out where that is the point)
FOLDERS = ("export", "runtime", "bundle", "edgeseg", "installer", "tools", "benchmarks")
#: the root of the UIDs the DICOM standard defines
DICOM_ROOT = "1.2.840" + ".10008."


def literal_uids() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if DICOM_ROOT in line:
                    found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_no_dicom_uid_is_spelled_out_in_the_code():
    found = literal_uids()
    assert not found, ("DICOM UIDs spelled out; use the names of pydicom.uid or pynetdicom.sop_class (imported "
                       "where pydicom/pynetdicom are imported already, to keep the runtime's imports light):\n"
                       + "\n".join(found))

