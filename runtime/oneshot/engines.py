"""Where a one-shot run reads and writes: the input and output folders from the command line or from the variables
the engines that start edgeseg set, and the model bundle.

=================  =====================================  =====================================================
engine             input folder                           output folder
=================  =====================================  =====================================================
command line       ``--input DIR``                        ``--output DIR``
mercure            ``MERCURE_IN_DIR``                     ``MERCURE_OUT_DIR``
MONAI Deploy       ``MONAI_INPUTPATH``                    ``MONAI_OUTPUTPATH``
Holoscan (MAP)     ``HOLOSCAN_INPUT_PATH``                ``HOLOSCAN_OUTPUT_PATH``
=================  =====================================  =====================================================

The command line wins; then the variables in the order of the table (mercure sets all three pairs to the same
folders, so the order only matters when an engine sets contradicting ones). The input and output are resolved
separately. The output may not be the input folder or inside it: the input may be read-only (a mounted volume) and
results inside it would be found as input by the next run.

The bundle: ``--bundle`` > ``EDGESEG_BUNDLE`` > the model folder of a MONAI application package
(``HOLOSCAN_MODEL_PATH`` / ``MONAI_MODELPATH``). The packaged demo bundle (trained on one case) runs only when named
``demo``: a model folder variable that points at a folder without ``bundle.json`` is a :class:`BundleError`, and a
run that names no bundle at all a :class:`ConfigError` -- never a silent fall-back to a model nobody asked for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from edgeseg.errors import BundleError, ConfigError, OutputError
from edgeseg.runtime.settings.schema import BUNDLE_REMEDY, DEMO_BUNDLE_KEYWORD

#: (engine, input variable, output variable), strongest first
FOLDER_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("mercure", "MERCURE_IN_DIR", "MERCURE_OUT_DIR"),
    ("MONAI Deploy", "MONAI_INPUTPATH", "MONAI_OUTPUTPATH"),
    ("Holoscan", "HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH"),
)
#: the bundle folder from the environment (a container image sets it to the baked-in or mounted bundle)
BUNDLE_VARIABLE = "EDGESEG_BUNDLE"
#: where a MONAI application package keeps its model(s); used as the bundle when it holds a bundle.json
MODEL_VARIABLES: tuple[str, ...] = ("HOLOSCAN_MODEL_PATH", "MONAI_MODELPATH")

@dataclass(frozen=True)
class Folders:
    """The resolved folders of one run (absolute) and where each came from (``--input``, ``MERCURE_IN_DIR`` ...)."""

    input: Path
    output: Path
    input_from: str
    output_from: str

    @property
    def engine(self) -> str:
        """The engine whose variables gave the input folder, or "command line"."""
        for engine, in_var, _ in FOLDER_VARIABLES:
            if self.input_from == in_var:
                return engine
        return "command line"


def _pick(flag_value: str | os.PathLike[str] | None, flag: str, names: list[str],
          env: Mapping[str, str]) -> tuple[Path, str] | None:
    if flag_value is not None and str(flag_value):
        return Path(os.path.abspath(os.fspath(flag_value))), flag
    for name in names:
        value = env.get(name, "")
        if value.strip():
            return Path(os.path.abspath(value)), name
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def resolve_folders(input_dir: str | os.PathLike[str] | None = None, output_dir: str | os.PathLike[str] | None = None,
                    env: Mapping[str, str] | None = None) -> Folders:
    """The input and output folders of a one-shot run (see the module docstring). The output folder is created
    when missing. Raises :class:`ConfigError` when either is not given, the input is not a folder, or the output is
    the input or inside it; :class:`OutputError` when the output cannot be created or written."""
    env = os.environ if env is None else env
    in_names = [v for _, v, _ in FOLDER_VARIABLES]
    out_names = [v for _, _, v in FOLDER_VARIABLES]
    picked_in = _pick(input_dir, "--input", in_names, env)
    picked_out = _pick(output_dir, "--output", out_names, env)
    if picked_in is None:
        raise ConfigError("No input folder: give --input DIR, or run under an engine that sets "
                          f"{' / '.join(in_names)}. Fix: name the folder holding the DICOM series.")
    if picked_out is None:
        raise ConfigError("No output folder: give --output DIR, or run under an engine that sets "
                          f"{' / '.join(out_names)}. Fix: name an empty folder outside the input folder.")
    (inp, in_from), (out, out_from) = picked_in, picked_out
    if not inp.is_dir():
        what = "is not a folder" if inp.exists() else "does not exist"
        raise ConfigError(f"{in_from}: {inp} {what}. Fix: give the folder holding the series to segment.")
    real_in, real_out = Path(os.path.realpath(inp)), Path(os.path.realpath(out))
    if _inside(real_out, real_in):
        where = "is the input folder" if real_out == real_in else "is inside the input folder"
        raise ConfigError(f"{out_from}: {out} {where} ({in_from}: {inp}). Fix: give an output folder outside the "
                          "input (the input may be read-only, and results there would be read as input).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out_from}: the output folder {out} cannot be created ({err.strerror or err}). Fix: "
                          "give a folder this user may write to.") from err
    if not out.is_dir() or not os.access(out, os.W_OK):
        raise OutputError(f"{out_from}: the output folder {out} is not a writable folder. Fix: give a folder this "
                          "user may write to.")
    return Folders(input=inp, output=out, input_from=in_from, output_from=out_from)


def resolve_bundle(flag_value: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(bundle folder or "demo", where it came from): ``--bundle`` > ``EDGESEG_BUNDLE`` > a MONAI application
    package's model folder (``HOLOSCAN_MODEL_PATH`` / ``MONAI_MODELPATH``). Raises :class:`BundleError` when that
    model folder holds no ``bundle.json`` and :class:`ConfigError` when nothing names a bundle: the demo bundle runs
    only when named ``demo``."""
    env = os.environ if env is None else env
    if flag_value is not None and str(flag_value):
        return os.fspath(flag_value), "--bundle"
    if env.get(BUNDLE_VARIABLE, "").strip():
        return env[BUNDLE_VARIABLE], BUNDLE_VARIABLE
    for name in MODEL_VARIABLES:
        value = env.get(name, "").strip()
        if not value:
            continue
        if not (Path(value) / "bundle.json").is_file():
            what = "holds no bundle.json" if Path(value).is_dir() else "does not exist"
            raise BundleError(f"{name}: the model folder {value} {what}, so it is not an edgeseg model bundle. Fix: "
                              "put the folder `edgeseg export` wrote there, or set EDGESEG_BUNDLE / --bundle to one "
                              f"(or to '{DEMO_BUNDLE_KEYWORD}' for the demo model, which is not for clinical use).")
        return value, name
    raise ConfigError(f"No model bundle named: give --bundle DIR, set {BUNDLE_VARIABLE}, or run in a MONAI "
                      f"application package ({' / '.join(MODEL_VARIABLES)}). Fix: name {BUNDLE_REMEDY}.")
