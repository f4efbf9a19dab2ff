"""What the status page and ``edgeseg status`` show of a series beyond its scheduling state: who and what it is
(the first image's PatientID and AccessionNumber) and what segmented it (the bundle, its variant and the precision
that ran). Recorded in the job store's schema-4 columns (:meth:`JobStore.set_facts`) by the worker.

Both are best effort: a header that does not read, or a manifest without the record, leaves the column empty.
"""
from __future__ import annotations

import logging
from typing import Any

from edgeseg.runtime.read import DICOM
from edgeseg.runtime.watch.jobs import SeriesJob

log = logging.getLogger(__name__)


def series_facts(job: SeriesJob) -> dict[str, str | None]:
    """``patient_id`` and ``accession`` of a DICOM series (its first image's header), else {}."""
    files = job.image_files if job.kind == DICOM else ()
    if not files:
        return {}
    from pydicom import dcmread

    try:
        ds = dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID", "AccessionNumber"])
    except Exception as err:  # noqa: BLE001 - a header that does not read only leaves the columns empty
        log.debug("patient facts not read: key=%s error=%s", job.key, err)
        return {}
    return {"patient_id": str(ds.get("PatientID", "") or ""), "accession": str(ds.get("AccessionNumber", "") or "")}


def result_facts(manifest: dict[str, Any]) -> dict[str, str | None]:
    """``model`` (bundle name, with the variant that ran) and ``precision`` (each part's, joined) of a result's
    manifest (:func:`edgeseg.runtime.segment.run_manifest`)."""
    bundle: dict[str, Any] = manifest.get("bundle") or {}
    run: dict[str, Any] = manifest.get("run") or {}
    if not isinstance(bundle, dict) or not isinstance(run, dict):
        return {}
    name = str(bundle.get("name") or "") or None
    variant = run.get("variant")
    model = f"{name} ({variant})" if name and variant else name
    parts: list[Any] = run.get("parts") or []
    if not isinstance(parts, list):
        parts = []
    precisions = list(dict.fromkeys(str(p.get("precision")) for p in parts if isinstance(p, dict)
                                    and p.get("precision")))
    return {"model": model, "precision": "/".join(precisions) or None}
