"""Series selection: which DICOM series (and which 3-D stacks of a series) are segmented, from headers only.

The one place that decides. :func:`select` is called by discovery when a command asks for selection
(:func:`~edgeseg.runtime.read.series_to_segment`: ``segment`` and ``run``) and by the watcher's completion tracker
for every complete series, so both skip the same series for the same rule.

What is segmented by default (:class:`SelectionRules`' defaults, the settings' ``selection:`` section): anatomical
magnitude images. Everything else is *skipped by rule*: not an error, no error file, logged once (at info level)
with the rule that matched, counted. The rules, in the order they are tried (the first that matches is the one
named):

1. ``modalities``: the series' Modality must be one of them (default MR; empty: any).
2. ``secondary_capture``: a Secondary Capture image (its SOP class) is skipped unless this is true.
3. ``exclude_image_types``: a series whose every image carries one of these ImageType (or enhanced FrameType)
   values is skipped (phase, field maps, diffusion and its maps, localizers, perfusion ...); a series holding
   several 3-D stacks loses the stacks that carry one (the phase stack of a magnitude/phase series). A diffusion
   b-value in the headers (DiffusionBValue > 0 or an MR Diffusion functional group, in any image of the series:
   its b = 0 volume too) counts as ImageType DIFFUSION (Canon DTI carries no DIFFUSION value in ImageType).
4. ``require_image_types``: when given, every value listed must be in the images' ImageType (e.g. ORIGINAL).
5. ``exclude_descriptions`` / ``include_descriptions``: case-insensitive globs on SeriesDescription and
   ProtocolName (a localizer or a BOLD run that its ImageType does not name).
6. ``min_slices``: fewer slice positions than this (a 3-plane localizer, a single slice) is skipped.
7. ``max_volumes``: a series holding more 3-D stacks at the same positions than this is a time series (BOLD,
   perfusion, DTI) and skipped as a whole.
8. ``multi_volume`` (the ``echoes`` setting): of a series holding several stacks, ``all``, the ``first``, or the
   ``magnitude`` ones only (ImageType M / MAGNITUDE).

NIfTI and PAR/REC files carry none of these headers: they are always segmented.
"""
from __future__ import annotations

import fnmatch
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Iterable, Sequence

from edgeseg.runtime.read.headers import Instance, split_series
from edgeseg.runtime.read.series_ref import SeriesRef, Skipped

log = logging.getLogger(__name__)

#: ImageType values that are not an anatomical magnitude image: phase/real/imaginary, field maps, diffusion and
#: its maps, localizers, perfusion and other parametric maps, projections
DEFAULT_EXCLUDED_IMAGE_TYPES: Final[tuple[str, ...]] = (
    "P", "PHASE", "R", "REAL", "I", "IMAGINARY", "B0", "B0MAP", "B0_MAP", "FIELD_MAP", "FIELDMAP", "B1", "B1MAP",
    "DIFFUSION", "ADC", "EADC", "FA", "TRACEW", "TRACE", "LOCALIZER", "PERFUSION", "ASL", "CBF", "CBV", "MTT", "TTP",
    "T1MAP", "T2MAP", "T2STAR_MAP", "MIP", "MNIP", "PROJECTION IMAGE", "SUBTRACTION", "SCREEN SAVE",
)
#: SeriesDescription / ProtocolName globs (case-insensitive) of series whose ImageType often does not say what
#: they are: localizers and surveys, diffusion, BOLD and perfusion runs
DEFAULT_EXCLUDED_DESCRIPTIONS: Final[tuple[str, ...]] = (
    "*localizer*", "*localiser*", "*scout*", "*survey*", "*3-plane*", "*3plane*", "*3pl loc*", "*dti*", "*dwi*",
    "*diffusion*", "*bold*", "*fmri*", "*resting*state*", "*perfusion*", "*pasl*", "*pcasl*", "*field*map*",
    "*fieldmap*", "*b0map*",
)
#: ImageType values of a magnitude image (``multi_volume: magnitude``)
MAGNITUDE: Final = frozenset({"M", "MAGNITUDE", "M_FFE", "M_SE", "M_IR"})


@dataclass(frozen=True)
class SelectionRules:
    """The selection rules (module docstring); the defaults are the settings schema's (``selection.*``)."""

    modalities: tuple[str, ...] = ("MR",)
    secondary_capture: bool = False
    exclude_image_types: tuple[str, ...] = DEFAULT_EXCLUDED_IMAGE_TYPES
    require_image_types: tuple[str, ...] = ()
    exclude_descriptions: tuple[str, ...] = DEFAULT_EXCLUDED_DESCRIPTIONS
    include_descriptions: tuple[str, ...] = ()
    min_slices: int = 3
    max_volumes: int = 8
    #: of a series holding several 3-D stacks: all, first or magnitude (the ``echoes`` setting)
    multi_volume: str = "all"
    #: False: every series is segmented (only ``multi_volume`` applies)
    enabled: bool = True


#: every series is segmented: what discovery does for a caller that asks for no selection
SEGMENT_ALL: Final = SelectionRules(enabled=False)


@dataclass
class Selection:
    """What :func:`select` decided for one series: the refs to segment and what was skipped."""

    refs: list[SeriesRef] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@functools.cache
def _secondary_capture() -> str:
    """The UID prefix of the Secondary Capture storage SOP classes (the single-frame one and its multi-frame
    siblings), from pydicom's names (pydicom is imported on first use)."""
    from pydicom.uid import SecondaryCaptureImageStorage

    return str(SecondaryCaptureImageStorage)


def _upper(values: Iterable[str]) -> set[str]:
    return {v.strip().upper() for v in values if v.strip()}


def _matches(text: str, patterns: Sequence[str]) -> str | None:
    lowered = text.strip().lower()
    for pattern in patterns:
        if lowered and fnmatch.fnmatchcase(lowered, pattern.lower()):
            return pattern
    return None


def _image_types(instance: Instance) -> set[str]:
    """The ImageType values of an instance (with every frame's FrameType for enhanced images), plus DIFFUSION when
    its headers carry a diffusion b-value > 0."""
    values = set(instance.image_type)
    for key, _ in instance.planes:
        values |= _upper(key[2].split("\\"))
    if instance.diffusion:
        values.add("DIFFUSION")
    return values


def series_rule(instances: Sequence[Instance], rules: SelectionRules) -> tuple[str, str] | None:
    """(rule, reason) of the first rule that skips the series made of ``instances`` (images and refused images),
    or None. Rules 1-5 of the module docstring (the series-level ones)."""
    if not rules.enabled or not instances:
        return None
    first = instances[0]
    modality = first.modality.strip().upper()
    if rules.modalities and modality not in _upper(rules.modalities):
        return "selection.modalities", (f"Modality {modality or '(none)'} is not one of "
                                        f"{', '.join(rules.modalities)}")
    if not rules.secondary_capture and all(i.sop_class.startswith(_secondary_capture()) for i in instances):
        return "selection.secondary_capture", "a secondary capture (screen capture or report image), not an acquisition"
    images = [i for i in instances if not i.is_localizer] or list(instances)
    excluded = _upper(rules.exclude_image_types)
    diffusion = {"DIFFUSION"} if any(i.diffusion for i in instances) else set()  # its b = 0 volume too
    hits = [((_image_types(i) | diffusion) & excluded) for i in images]
    if excluded and all(hits):
        values = sorted(set().union(*hits))
        return "selection.exclude_image_types", f"ImageType {'/'.join(values)}"
    required = _upper(rules.require_image_types)
    if required:
        lacking = sorted(set().union(*(required - _image_types(i) for i in images)))
        if lacking:
            return "selection.require_image_types", f"ImageType without {'/'.join(lacking)}"
    for text, what in ((first.description, "SeriesDescription"), (first.protocol, "ProtocolName")):
        pattern = _matches(text, rules.exclude_descriptions)
        if pattern is not None:
            return "selection.exclude_descriptions", f"{what} {text!r} matches {pattern!r}"
    if rules.include_descriptions and not any(_matches(text, rules.include_descriptions)
                                              for text in (first.description, first.protocol)):
        return "selection.include_descriptions", (f"neither SeriesDescription {first.description!r} nor ProtocolName "
                                                  f"{first.protocol!r} matches {', '.join(rules.include_descriptions)}")
    return None


def _stack_types(ref: SeriesRef) -> set[str]:
    return _upper(ref.stack.key[2].split("\\")) if ref.stack is not None else set()


def _slices(ref: SeriesRef) -> int | None:
    return ref.geometry.shape[2] if ref.geometry is not None else None


def select(ref: SeriesRef, members: Sequence[tuple[Path, Instance]], rules: SelectionRules) -> Selection:
    """Decide for the DICOM series ``ref`` made of ``members`` (path, instance; images and refused images): the
    refs to segment (one per 3-D stack where it holds several: :func:`~edgeseg.runtime.read.split_series`) and
    what was skipped by which rule. Logs nothing (the caller logs each :class:`Skipped` once)."""
    out = Selection()
    identity = ref.identity or str(ref.source)
    files = tuple(p for p, _ in members)
    hit = series_rule([i for _, i in members], rules)
    if hit is not None:
        out.skipped.append(Skipped(identity, ref.description, *hit, files, ref.series_key))
        return out
    images = [(p, i) for p, i in members if i.is_image]
    stacks = split_series(ref, images, "all")
    if rules.enabled and stacks[0].stack is not None and len(stacks) > rules.max_volumes:
        out.skipped.append(Skipped(identity, ref.description, "selection.max_volumes",
                                   f"{len(stacks)} 3-D volumes at the same positions (a time series: BOLD, perfusion, "
                                   f"diffusion), more than {rules.max_volumes}", files, ref.series_key))
        return out
    excluded = _upper(rules.exclude_image_types) if rules.enabled else set()
    kept: list[SeriesRef] = []
    for stack in stacks:
        values = _stack_types(stack) & excluded
        if values:
            out.skipped.append(Skipped(identity, ref.description, "selection.exclude_image_types",
                                       f"ImageType {'/'.join(sorted(values))} ({stack.stack.description})"
                                       if stack.stack else f"ImageType {'/'.join(sorted(values))}", stack.files,
                                       stack.key))
            continue
        slices = _slices(stack)
        if rules.enabled and slices is not None and slices < rules.min_slices:
            out.skipped.append(Skipped(identity, ref.description, "selection.min_slices",
                                       f"{slices} slice(s), fewer than {rules.min_slices}", stack.files, stack.key))
            continue
        kept.append(stack)
    if len(kept) > 1 and rules.multi_volume == "magnitude":
        magnitude = [s for s in kept if _stack_types(s) & MAGNITUDE]
        for s in kept:
            if s not in magnitude:
                what = s.stack.description if s.stack else ""
                out.skipped.append(Skipped(identity, ref.description, "echoes",
                                           f"not a magnitude image (echoes: magnitude; {what})", s.files, s.key))
        kept = magnitude
    elif len(kept) > 1 and rules.multi_volume == "first":
        for s in kept[1:]:
            out.skipped.append(Skipped(identity, ref.description, "echoes", "not the first stack (echoes: first)",
                                       s.files, s.key))
        kept = kept[:1]
    out.refs = kept
    return out
