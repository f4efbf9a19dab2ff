"""``edgeseg segment``: segment one series (file or DICOM folder) with a bundle, results beside it."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from edgeseg.runtime.settings.flags import add_flags

    p = sub.add_parser(
        "segment", help="segment one series (NIfTI/PAR file or DICOM folder) with a model bundle",
        description="Read a series, run the bundle's OpenVINO model(s) on this PC and write the masks into "
                    "'<name>.edgeseg/' beside the series (atomically). A DICOM folder holding several series "
                    "gets one result per image series. Exit status 0 when every series was segmented with every "
                    "requested output; 16 (partial) when an output could not be written; 17 when some series were "
                    "segmented and others failed; else the code of the first series that failed (the README lists "
                    "them).")
    p.add_argument("input", type=Path, help="NIfTI (.nii/.nii.gz), PAR/REC, or a DICOM folder")
    add_flags(p, "segment")  # the settings' flags, from the schema (runtime/settings)
    p.add_argument("--cache-dir", type=Path,
                   help="OpenVINO compiled-model cache (default: ~/.cache/edgeseg/model_cache; speeds up every "
                        "start, the iGPU's most)")
    p.add_argument("--no-cache", action="store_true", help="do not use or write a compiled-model cache")
    p.set_defaults(func=run_segment)


def resolve_bundle_path(value: str | Path) -> Path:
    """'demo' (:data:`~edgeseg.runtime.settings.schema.DEMO_BUNDLE_KEYWORD`) means the bundle shipped inside the
    package."""
    from edgeseg.runtime.settings.schema import DEMO_BUNDLE_KEYWORD

    if str(value) == DEMO_BUNDLE_KEYWORD:
        from edgeseg.demo import demo_bundle_path

        return demo_bundle_path()
    return Path(value)


def run_segment(args: argparse.Namespace) -> int:
    from edgeseg.errors import ConfigError, EdgesegError, summary_exit_code
    from edgeseg.runtime.read import series_to_segment
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.settings.flags import flag_values
    from edgeseg.runtime.settings.run import segment_settings
    from edgeseg.runtime.settings.schema import BUNDLE_REMEDY
    from edgeseg.runtime.write import PARTIAL, describe_missing

    settings = segment_settings(flag_values(args, "segment"))
    cache_dir = None if args.no_cache else (args.cache_dir or _user_cache() / "model_cache")
    options = settings.segment_options(cache_dir)
    latency_path = None
    if settings.time_budget_s:  # tile latencies measured once and kept per user
        _user_cache().mkdir(parents=True, exist_ok=True)
        latency_path = _user_cache() / "latency.json"
    if not args.bundle:  # nothing runs a model nobody named
        raise ConfigError(f"No model bundle named. Fix: pass --bundle with {BUNDLE_REMEDY}.")
    segmenter = Segmenter(resolve_bundle_path(args.bundle), options, latency_path=latency_path)
    # images edgeseg refuses (a mosaic, a colour image, no geometry) are series that failed, each with its reason
    refs, refused = series_to_segment(args.input, selection=settings.selection)
    failed: list[EdgesegError] = list(refused)
    complete = partial = 0
    for ref in refs:
        shown = [-1]

        def progress(msg: str, frac: float) -> None:
            decile = int(frac * 10)  # long work shows progress, about every 10 %
            if decile > shown[0]:
                shown[0] = decile
                log.info("%3.0f%% %s", 100 * frac, msg)

        try:
            result = segmenter.segment(ref, progress=progress)
        except EdgesegError as err:
            failed.append(err)
            log.error("%s", err)
            continue
        t = result.manifest["run"]["timings_s"]
        precisions = ", ".join(p["precision"] for p in result.manifest["run"]["parts"])
        is_partial = result.status == PARTIAL
        print(f"{result.output_dir}  ({t['total']:.1f} s, {precisions}{', PARTIAL' if is_partial else ''})")
        for role, path in sorted(result.files.items()):
            print(f"  {role:12s} {path}")
        if is_partial:
            partial += 1
            print(f"  PARTIAL: {describe_missing(result.missing_outputs)}")
        else:
            complete += 1
    return summary_exit_code(complete, partial, failed)


def _user_cache() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeseg"

