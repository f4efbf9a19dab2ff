"""The :class:`SeriesRef`: one series found on disk, before its pixels are read."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edgeseg.runtime.naming import dicom_series_name, nifti_name, series_key
from edgeseg.runtime.read.geometry import SeriesGeometry

log = logging.getLogger("edgeseg.runtime.read.selection")

#: kinds of series (``SeriesRef.kind``, ``Volume.kind``, and the watcher's job kind)
DICOM: Final = "dicom"
NIFTI: Final = "nifti"
PARREC: Final = "parrec"


#: what tells the 3-D stacks of one DICOM series apart, per frame: (EchoNumbers, EchoTime in ms, ImageType,
#: temporal position), each as text ("" where the header does not say); see
#: :func:`edgeseg.runtime.read.headers.frame_stack_keys`
StackKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class Stack:
    """One 3-D stack of a DICOM series that holds several at the same slice positions (echoes, image types such as
    Dixon in/opposed phase, time points): :func:`edgeseg.runtime.read.headers.split_series`.

    ``index``: 0-based in stack order (echo number, echo time, time point, image type); ``count``: how many stacks
    the series has; ``label``: what names and keys append (``echo2``, ``IN_PHASE``, ``t3``; sanitized); ``key``: the
    frames' :data:`StackKey`; ``description``: for people and the manifest (``echo 2 of 2: EchoNumbers 2, EchoTime
    9.2 ms``)."""

    index: int
    count: int
    label: str
    key: StackKey
    description: str

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "count": self.count, "label": self.label, "description": self.description}


@dataclass(frozen=True)
class SeriesRef:
    """A series found on disk from headers only (by :func:`edgeseg.runtime.read.discover_series`, or by the
    watcher's completion tracker as its files arrive); pass it to ``read_series``.

    * ``kind``: "dicom", "nifti" or "parrec".
    * ``source``: the folder holding the series' DICOM files (where results are written), or the NIfTI/PAR file.
    * ``files``: the image files of the series, sorted by path (not by slice position; that is decided when
      reading). For DICOM: every instance of the series that has image geometry (localizers included; they
      are dropped while reading). For NIfTI/PAR: the one file.
    * ``uid``: the DICOM SeriesInstanceUID (None for NIfTI/PAR, and for a DICOM series exported without one).
    * ``series_id``: for DICOM, the series' identity (:func:`~edgeseg.runtime.read.headers.series_identity`): its
      SeriesInstanceUID, or ``nouid-<hex>`` derived from its headers when it has none; None for NIfTI/PAR.
    * ``stack``: for a DICOM series holding several 3-D stacks at the same positions (echoes, image types, time
      points), the one this ref reads (:class:`Stack`; ``files`` are then that stack's files); None otherwise.
    * ``description``: SeriesDescription (DICOM) or the file name.
    * ``modality``: DICOM Modality ("MR", ...), or "" for NIfTI/PAR.
    * ``expected_instances``: how many instances the headers announce
      (:func:`~edgeseg.runtime.read.headers.expected_instances`; a hint for series completion), else None.
    * ``geometry``: the volume's size as the headers describe it (:class:`SeriesGeometry`), when known.
    """

    kind: str
    source: Path
    files: tuple[Path, ...]
    uid: str | None = None
    description: str = ""
    modality: str = ""
    series_number: int | None = None
    expected_instances: int | None = None
    geometry: SeriesGeometry | None = None
    series_id: str | None = None
    stack: Stack | None = None

    @property
    def identity(self) -> str | None:
        """What identifies a DICOM series in its folder: ``series_id``, else ``uid``; None for NIfTI/PAR."""
        return self.series_id or self.uid

    @property
    def name(self) -> str:
        """The series' output name (``<name>.edgeseg/``), as the reader names the :class:`Volume` it reads."""
        if self.kind == DICOM:
            return dicom_series_name(self.description, self.identity or "", self.stack.label if self.stack else None)
        return nifti_name(self.source.name)

    @property
    def folder(self) -> Path:
        """The folder results are written into: the DICOM folder, or the folder holding the NIfTI/PAR file."""
        return self.source if self.kind == DICOM else self.source.parent

    @property
    def key(self) -> str:
        """The series' identity (:func:`edgeseg.runtime.naming.series_key`): the watcher's job key."""
        return series_key(self.kind, os.fspath(self.source), self.identity, self.stack.label if self.stack else None)

    @property
    def series_key(self) -> str:
        """The key of the whole series (without its stack): what the watcher records when the series is first
        seen, before it knows its stacks."""
        return series_key(self.kind, os.fspath(self.source), self.identity)


@dataclass(frozen=True)
class Skipped:
    """A DICOM series (or one 3-D stack of it) skipped by a rule: its identity, description, the rule (``rule``: the
    setting's key path) and why in words (``reason``), and its files (:mod:`edgeseg.runtime.read.selection` decides)."""

    series: str
    description: str
    rule: str
    reason: str
    files: tuple[Path, ...] = ()
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"series": self.series, "description": self.description, "rule": self.rule, "reason": self.reason,
                "files": len(self.files)}

    def log(self) -> None:
        log.info("series skipped by rule: series=%s description=%r rule=%s reason=%s files=%d", self.key or self.series,
                 self.description, self.rule, self.reason, len(self.files))
