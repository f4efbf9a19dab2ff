"""The closed value sets of the settings: each setting whose values are a fixed list is one of these enums.

They are :class:`enum.StrEnum`: a member *is* its value (``Precision.FP32 == "fp32"``, ``str(Precision.FP32) ==
"fp32"``), so code that compares with or formats plain strings keeps working. This module is a leaf: it imports
nothing of edgeseg.
"""
from __future__ import annotations

import enum


class ObserverKind(enum.StrEnum):
    """How file-system changes are noticed. ``native``: OS notifications (inotify, ReadDirectoryChangesW, FSEvents);
    ``polling``: periodic directory snapshots, the only kind that sees changes made on network shares by another
    machine."""

    NATIVE = "native"
    POLLING = "polling"


class Precision(enum.StrEnum):
    """Model precision: ``auto`` (the fastest the device compiles, recorded in the manifest) or one the bundle
    holds."""

    AUTO = "auto"
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class SegType(enum.StrEnum):
    """DICOM-SEG type: ``labelmap`` (one frame per slice) or ``binary`` (one 1-bit frame per structure and slice)."""

    LABELMAP = "labelmap"
    BINARY = "binary"


class Echoes(enum.StrEnum):
    """Of a series holding several 3-D stacks at the same positions (echoes, Dixon, time points): segment ``all``
    (each its own result), only the ``first``, or only the ``magnitude`` stacks (ImageType M / MAGNITUDE)."""

    ALL = "all"
    FIRST = "first"
    MAGNITUDE = "magnitude"


class DeviceFamily(enum.StrEnum):
    """The OpenVINO device families edgeseg runs on (:mod:`edgeseg.runtime.infer.devices` holds the full rule:
    ``GPU.<n>``, ``AUTO:<devices>``)."""

    CPU = "CPU"
    GPU = "GPU"
    AUTO = "AUTO"

    @classmethod
    def of(cls, device: str) -> DeviceFamily:
        """The family of a supported device name (``"gpu.1"`` -> GPU, ``"AUTO:GPU,CPU"`` -> AUTO)."""
        return cls(device.strip().upper().split(":")[0].split(".")[0])


class DestinationRole(enum.StrEnum):
    """What a DICOM destination is sent: the DICOM-SEG (``seg``) and/or the TID 1500 SR (``sr``)."""

    SEG = "seg"
    SR = "sr"


def values(kind: type[enum.StrEnum]) -> tuple[str, ...]:
    """The values of an enum, in declaration order (``("auto", "int8", "fp16", "fp32")``)."""
    return tuple(member.value for member in kind)
