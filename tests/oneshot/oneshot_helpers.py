"""mercure's side of the module contract, played from mercure's own description (mercure-imaging/mercure:
``docs/modules.rst``; ``app/common/types.py`` for ``Task``/``TaskInfo``/``TaskProcessing``/``Module``;
``app/routing/generate_taskfile.py`` for how a task is composed; ``app/process/process_series.py`` for the folders,
variables and what is taken back; ``getdcmtags`` for the ``.tags`` sidecar).

A unique module name (not ``helpers``), so it cannot clash with the other test folders' helpers.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping

import pydicom

#: the variables mercure's docker runtime sets for every module container (process_series.docker_runtime)
MERCURE_IN, MERCURE_OUT = "/tmp/data", "/tmp/output"


def mercure_environment(in_dir: Path, out_dir: Path, persistence: Path | None = None,
                        bundle: str | None = "demo") -> dict[str, str]:
    """What mercure sets: MERCURE_IN_DIR/OUT_DIR, and MONAI_*/HOLOSCAN_* to the same folders; with
    ``requires_persistence`` also MODULE_PERSISTENCE_DIR. ``bundle``: EDGESEG_BUNDLE as the module's image sets it
    (the demo runs only when named; None: unset)."""
    env = {"MERCURE_IN_DIR": str(in_dir), "MERCURE_OUT_DIR": str(out_dir),
           "MONAI_INPUTPATH": str(in_dir), "MONAI_OUTPUTPATH": str(out_dir),
           "HOLOSCAN_INPUT_PATH": str(in_dir), "HOLOSCAN_OUTPUT_PATH": str(out_dir)}
    if bundle is not None:
        env["EDGESEG_BUNDLE"] = bundle
    if persistence is not None:
        env["MODULE_PERSISTENCE_DIR"] = str(persistence)
    return env


def tags_of(ds: Any, original_name: str) -> dict[str, str]:
    """The ``.tags`` sidecar getdcmtags writes: a few identifiers, the sender, the main tags as strings, the
    original file name."""
    tags = {"SpecificCharacterSet": str(ds.get("SpecificCharacterSet", "")),
            "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
            "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
            "SenderAddress": "10.0.0.7", "SenderAET": "SCANNER1", "ReceiverAET": "mercure"}
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "Modality",
                    "StudyDescription", "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID",
                    "SeriesDescription", "ProtocolName", "SeriesNumber", "AcquisitionNumber", "InstanceNumber",
                    "ImageType", "SOPClassUID"):
        if keyword in ds:
            tags[keyword] = str(ds[keyword].value)
    tags["Filename"] = original_name
    return tags


def task_json(uid: str, settings: Mapping[str, Any] | None = None, *, uid_type: str = "series",
              module_name: str = "edgeseg", task_id: str = "5a2b2f0e-6c5e-11ef-9c1a-0242ac120002") -> dict[str, Any]:
    """A task file as mercure composes it for a processing rule (``Task.dict()`` with one ``TaskProcessing``; the
    module's and the rule's settings already merged into ``process.settings``)."""
    module_config = {"docker_tag": "edgeseg/mercure:0.1.0", "additional_volumes": "", "environment": "",
                     "docker_arguments": "", "settings": {}, "contact": "", "comment": "", "constraints": "",
                     "resources": "", "requires_root": False, "requires_persistence": True,
                     "persistence_folder_name": "", "network_enabled": False}
    return {
        "info": {"action": "process", "uid": uid, "uid_type": uid_type, "triggered_rules": {"mr_abdomen": True},
                 "applied_rule": "mr_abdomen", "patient_name": "DEMO^EDGESEG", "mrn": "EDGESEG-DEMO", "acc": "A1",
                 "sender_address": "10.0.0.7", "mercure_version": "0.4.0-beta.12", "mercure_appliance": "master",
                 "mercure_server": "mercure1", "device_serial_number": None, "fail_stage": None,
                 "sender_aet": "SCANNER1", "receiver_aet": "mercure"},
        "id": task_id,
        "dispatch": {},
        "process": {"module_name": module_name, "module_config": module_config, "settings": dict(settings or {}),
                    "retain_input_images": False, "output": None},
        "study": {},
        "nomad_info": None,
    }


def mercure_input(folder: Path, series: Iterable[Iterable[Path]], settings: Mapping[str, Any] | None = None, *,
                  uid_type: str = "series") -> Path:
    """``folder`` filled as mercure fills a module's input: each DICOM file copied as ``<SeriesUID>#<file>.dcm``
    with its ``.tags``, and ``task.json`` (``info.uid``: the first series' UID, or its study's for a study task)."""
    folder.mkdir(parents=True, exist_ok=True)
    first: Any = None
    for files in series:
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            first = first or ds
            stem = f"{ds.SeriesInstanceUID}#{path.stem}"
            shutil.copyfile(path, folder / f"{stem}.dcm")
            (folder / f"{stem}.tags").write_text(json.dumps(tags_of(ds, path.name), indent=2), encoding="utf-8")
    assert first is not None, "no DICOM file given"
    uid = str(first.StudyInstanceUID if uid_type == "study" else first.SeriesInstanceUID)
    (folder / "task.json").write_text(json.dumps(task_json(uid, settings, uid_type=uid_type)), encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry below ``folder``: relative path -> (mode, size, content) (folders: empty content)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_size,
                                              path.read_bytes() if stat.S_ISREG(st.st_mode) else b"")
    return out


def make_read_only(folder: Path) -> None:
    """Files 0444, folders 0555 (the engine mounts the input read-only)."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)


def make_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def dispatched(out: Path) -> list[Path]:
    """What mercure dispatches from a module's output: ``*.dcm`` (``mercure_names.DCMFILTER``)."""
    return sorted(out.glob("*.dcm"))


def read_result(out: Path) -> dict[str, Any]:
    return json.loads((out / "result.json").read_text(encoding="utf-8"))
