"""``edgeseg run``: one-shot mode for engines that start a processing step per task (mercure, MONAI Deploy, vendor
AI platforms): segment every series of the input folder once into the output folder, then exit."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from edgeseg.runtime.oneshot.run import LAYOUTS
    from edgeseg.runtime.settings.flags import add_flags

    p = sub.add_parser(
        "run", help="one-shot: segment every series of an input folder once into an output folder, then exit",
        description="Segment every series found in the input folder once and write the results into the output "
                    "folder (never beside the input: it may be read-only). Folders from --input/--output, else from "
                    "MERCURE_IN_DIR/MERCURE_OUT_DIR, MONAI_INPUTPATH/MONAI_OUTPUTPATH or HOLOSCAN_INPUT_PATH/"
                    "HOLOSCAN_OUTPUT_PATH. An input holding mercure's task.json gets mercure's layout (the DICOM-SEG "
                    "and SR as *.dcm plus result.json; settings from task.json's process.settings, overridden by "
                    "the options below); any other gets one <name>.edgeseg/ folder per series plus result.json. "
                    "Exit status 0 when every series was segmented with every requested output; 16 (partial) when "
                    "an output could not be written; 17 when some series were segmented and others failed; else "
                    "the code of the first failure (the README lists them). No watcher, no job store, no network.")
    p.add_argument("--input", type=Path, help="folder of the series (default: the engine's input variable)")
    p.add_argument("--output", type=Path, help="folder for the results, outside the input (default: the engine's "
                                               "output variable); created if missing")
    p.add_argument("--bundle", help="model bundle folder, or 'demo' (default: EDGESEG_BUNDLE, else a MONAI package's "
                                    "HOLOSCAN_MODEL_PATH/MONAI_MODELPATH, which must hold bundle.json; the demo "
                                    "model runs only when named)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="mercure: only *.dcm results and result.json; folders: <name>.edgeseg/ per series; map: as "
                        "folders, the *.dcm results moved to the top level; auto (default): mercure when the input "
                        "holds task.json, map when a MAP host's HOLOSCAN_*/MONAI_* variables give the folders")
    add_flags(p, "run")  # the settings' flags, from the schema (runtime/settings): over process.settings
    p.add_argument("--cache-dir", type=Path,
                   help="OpenVINO compiled-model cache (default: <MODULE_PERSISTENCE_DIR>/edgeseg/model_cache when "
                        "mercure offers a persistence folder, else none)")
    p.add_argument("--no-cache", action="store_true", help="do not use or write a compiled-model cache")
    p.add_argument("--show-manifests", action="store_true",
                   help="in the MONAI Application Package image: print its app.json and pkg.json, run nothing")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from edgeseg.runtime.oneshot import map as map_package
    from edgeseg.runtime.oneshot.engines import resolve_bundle, resolve_folders
    from edgeseg.runtime.oneshot.run import run_oneshot

    if getattr(args, "show_manifests", False):
        found = [p for p in map_package.manifests() if p.is_file()]
        for path in found:
            print(f"# {path}\n{path.read_text(encoding='utf-8')}")
        if not found:
            print("Not a MONAI Application Package image: no /etc/holoscan/app.json (HOLOSCAN_APP_MANIFEST_PATH).")
        return 0 if found else 1
    if map_package.export_requested():  # the MAP host mounted the export folder: export, run nothing
        for folder in map_package.export():
            print(f"exported {folder}")
        return 0

    folders = resolve_folders(args.input, args.output)
    bundle, bundle_from = resolve_bundle(args.bundle)
    log.info("one-shot run: input=%s (%s) output=%s (%s) bundle=%s (%s)", folders.input, folders.input_from,
             folders.output, folders.output_from, bundle, bundle_from)
    from edgeseg.runtime.settings.flags import flag_values

    overrides = flag_values(args, "run")
    result = run_oneshot(folders, bundle, overrides, layout=args.layout, cache_dir=args.cache_dir,
                         use_cache=not args.no_cache)
    for outcome in result.outcomes:
        extra = f", PARTIAL: {outcome.missing_outputs}" if outcome.missing_outputs else ""
        print(f"{outcome.status:8s} {outcome.name}  ({outcome.seconds:.1f} s{extra})")
        for role, rel in sorted(outcome.outputs.items()):
            print(f"  {role:12s} {folders.output / rel}")
    for err in result.failures:
        print(f"failed   {err}")
    print(f"{result.status}: exit status {result.exit_code}; summary in {result.result_file}")
    return result.exit_code
