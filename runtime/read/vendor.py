"""Orientation facts vendors encode privately that change what the pixels mean, applied as dcm2niix applies them.

Each rule names its source in dcm2niix (rordenlab/dcm2niix, ``console/nii_dicom.cpp`` and
``console/nii_dicom_batch.cpp``, read at commit 98ecd0b, 2024-12-14; the correction itself since f1f0d30, 2021-08-11,
issue 532):

* **GE reverse-polarity EPI** (``epi_pepolar``, e.g. SIGNA UHP): the images of the reversed phase-encoding
  polarity are stored with their rows in reverse order; the header geometry (ImagePositionPatient,
  ImageOrientationPatient) is that of the upright image. dcm2niix reverses the rows of the pixel data only
  (``nii_flipImgY``), for images whose

  - Manufacturer is GE and the private PulseSequenceName (0019,109C) (creator ``GEMS_ACQU_01``) contains
    ``epi_pepolar`` (``kPulseSequenceNameGE``), and whose
  - private user data 12 (0019,10B3) (``kUserData12GE``, DS, rounded) says which volumes are reversed:
    1 = every volume (``kGE_EPI_PEPOLAR_REV``); 2 = reversed, forward, reversed ... (volumes whose
    TemporalPositionIdentifier (0020,0100) is odd, ``kGE_EPI_PEPOLAR_REV_FWD_FLIP``); 3 = forward, reversed ...
    (even TemporalPositionIdentifier > 0, ``kGE_EPI_PEPOLAR_FWD_REV_FLIP``); 0 or absent = none.

  edgeseg does the same (:func:`reversed_rows`): the read volume is upright and the masks, NIfTI and SEG are in
  the header's geometry. A value of (0019,10B3) dcm2niix does not know, or an alternating series without
  TemporalPositionIdentifier, is refused with the reason (:class:`~edgeseg.errors.InvalidSeriesError`): edgeseg
  cannot tell which way up the image is.

Other private orientation facts dcm2niix applies were checked and need nothing here: Siemens mosaics (refused by
the reader), Philips/UIH phase-encoding polarity (0065,1058 for UIH) and GE's (0043,102A) bits, which change only
the BIDS sidecar's PhaseEncodingDirection, not the pixels.
"""
from __future__ import annotations

from typing import Any

from edgeseg.errors import InvalidSeriesError

#: (0019,109C) GE PulseSequenceName, (0019,10B3) GE user data 12 (dcm2niix kPulseSequenceNameGE, kUserData12GE)
GE_PULSE_SEQUENCE_NAME = (0x0019, 0x109C)
GE_USER_DATA_12 = (0x0019, 0x10B3)
GE_ACQU_CREATOR = "GEMS_ACQU_01"
#: user data 12 -> which volumes are stored with reversed rows (dcm2niix's kGE_EPI_PEPOLAR_* cases)
PEPOLAR_MODES = {0: "none", 1: "every volume", 2: "odd volumes (reversed first)", 3: "even volumes (forward first)"}


def _private(ds: Any, tag: tuple[int, int]) -> Any:
    """A GE acquisition private element's value, found through its creator GEMS_ACQU_01 (wherever the block is),
    or at the tag GE writes when an export dropped the creator; None when absent."""
    group, elem = tag
    try:
        return ds.private_block(group, GE_ACQU_CREATOR)[elem & 0xFF].value
    except (KeyError, ValueError):
        pass
    if ds.get((group, 0x0010)) is None and (group, elem) in ds:
        return ds[group, elem].value
    return None


def _is_ge(ds: Any) -> bool:
    return str(ds.get("Manufacturer", "")).upper().startswith("GE")


def reversed_rows(ds: Any, where: str = "") -> bool:
    """True when this (classic, single-frame) GE image stores its rows in reverse order (module docstring).
    Raises :class:`InvalidSeriesError` when it is an ``epi_pepolar`` image whose mode edgeseg cannot read."""
    if not _is_ge(ds):
        return False
    name = _private(ds, GE_PULSE_SEQUENCE_NAME)
    if name is None or "epi_pepolar" not in (name.decode("latin-1", "replace") if isinstance(name, bytes)
                                             else str(name)):
        return False
    raw = _private(ds, GE_USER_DATA_12)
    try:
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        mode = 0 if text in (None, "") else int(round(float(text)))
    except (TypeError, ValueError):
        mode = -1
    if mode not in PEPOLAR_MODES:
        raise InvalidSeriesError(
            f"{where}: a GE reverse-polarity EPI image (PulseSequenceName '{name}') with user data 12 (0019,10B3) "
            f"{raw!r}, a mode dcm2niix does not know: edgeseg cannot tell whether its rows are stored reversed, "
            "so it does not segment it. Export the series with its polarity mode (0, 1, 2 or 3), or segment the "
            "forward-polarity series instead.")
    if mode in (0, 1):
        return mode == 1
    position = ds.get("TemporalPositionIdentifier")
    try:
        volume = int(position)
    except (TypeError, ValueError):
        raise InvalidSeriesError(
            f"{where}: a GE reverse-polarity EPI image whose polarity alternates by volume (user data 12 "
            f"(0019,10B3) = {mode}: {PEPOLAR_MODES[mode]}) but without TemporalPositionIdentifier (0020,0100): "
            "edgeseg cannot tell whether its rows are stored reversed, so it does not segment it. Export the "
            "series with its temporal positions.") from None
    if volume <= 0:
        return False
    return volume % 2 == 1 if mode == 2 else volume % 2 == 0
