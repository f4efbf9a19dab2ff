"""What the frozen runtime must contain and what it must not: the one list ``edgeseg.spec`` builds from.

PyInstaller follows ``import`` statements. It cannot see what the runtime loads from strings at run time:

* OpenVINO loads its device plugins (``libopenvino_intel_cpu_plugin.so`` ...) and model frontends
  (``libopenvino_ir_frontend.so`` reads the bundle's IR) by file name from its ``libs`` folder;
* pydicom imports its pixel decoders and encoders by module name (``pydicom.pixels.decoders.pyjpegls`` ...), and
  each decoder imports its backend (gdcm, jpeg_ls, PIL's JPEG plugins) only when asked to decode;
* watchdog picks its observer module by platform (inotify, ReadDirectoryChangesW, FSEvents, kqueue, polling);
* edgeseg itself registers sub-commands and the watcher's adapters with ``importlib.import_module``.

This module imports neither PyInstaller nor the packages it names, so a fast test can check it against the
installed packages without building (``tests/installer/test_freeze_manifest.py``).
"""
from __future__ import annotations

import fnmatch
import os
import re
import sys
from pathlib import Path, PurePath
from typing import Callable

#: Python packages the runtime never imports; pulling any of them in (torch alone is > 600 MB) fails the build.
#: ``edgeseg.export`` is the build-machine stage: the frozen ``edgeseg export`` says how to get it instead.
EXCLUDES: tuple[str, ...] = (
    "edgeseg.export",
    "torch", "torchvision", "torchaudio", "timm", "onnx", "onnxruntime", "onnxscript", "nncf", "nnunetv2",
    "dynamic_network_architectures", "batchgenerators", "batchgeneratorsv2", "acvl_utils", "SimpleITK",
    "matplotlib", "pandas", "sklearn", "skimage", "sympy", "networkx", "jax", "tensorflow", "paddle",
    "IPython", "jupyter", "notebook", "pytest", "setuptools", "pip", "tkinter", "_tkinter",
    # OpenVINO's model-conversion side: the runtime only reads IR, it never converts. ``import openvino`` tries
    # ``openvino.tools.ovc`` inside try/except ImportError (and ovc would load telemetry and the TF frontend).
    "openvino.tools", "openvino.torch", "openvino.frontend.pytorch", "openvino.frontend.tensorflow",
    "openvino.frontend.jax", "openvino.frontend.paddle", "openvino.frontend.onnx", "openvino_telemetry",
    # scipy: the runtime uses scipy.ndimage only (which needs scipy._lib and scipy.special); the rest is ~40 MB.
    # scipy.special imports scipy.optimize lazily, only for non-numpy array backends.
    "scipy.optimize", "scipy.sparse", "scipy.spatial", "scipy.stats", "scipy.integrate", "scipy.interpolate",
    "scipy.io", "scipy.linalg", "scipy.fft", "scipy.fftpack", "scipy.signal", "scipy.cluster", "scipy.odr",
    "scipy.datasets", "scipy.differentiate", "scipy.misc",
    # Pillow codecs and GUI bridges the preview PNG, highdicom and pydicom's decoders never use (~6 MB of vendored
    # libavif/libwebp); their plugins import them in try/except and report the format as unsupported.
    "PIL._avif", "PIL._webp", "PIL._imagingtk", "PIL.ImageTk", "PIL.ImageQt",
)

#: modules the frozen app must never contain (checked on the built folder too)
FORBIDDEN_TOP_LEVEL: tuple[str, ...] = ("torch", "torchvision", "onnx", "onnxruntime", "nncf", "nnunetv2",
                                        "timm", "matplotlib", "pandas")

#: pydicom >= 3 looks these up by name (``pydicom.pixels.decoders.base`` / ``encoders.base``); a decoder whose
#: backend (gdcm, pylibjpeg) is not installed is harmless: pydicom reports it as unavailable.
PYDICOM_HIDDEN_IMPORTS: tuple[str, ...] = (
    "pydicom.pixels.decoders",
    "pydicom.pixels.decoders.base",
    "pydicom.pixels.decoders.gdcm",
    "pydicom.pixels.decoders.pillow",
    "pydicom.pixels.decoders.pyjpegls",
    "pydicom.pixels.decoders.pylibjpeg",
    "pydicom.pixels.decoders.rle",
    "pydicom.pixels.encoders",
    "pydicom.pixels.encoders.base",
    "pydicom.pixels.encoders.gdcm",
    "pydicom.pixels.encoders.native",
    "pydicom.pixels.encoders.pyjpegls",
    "pydicom.pixels.encoders.pylibjpeg",
    # character sets
    "pydicom.charset",
)

#: the pixel-decoder backends of the base install (pyproject.toml's dependencies): import name -> (distribution,
#: licence, transfer syntaxes it decodes for pydicom). Each plugin imports its backend lazily, so PyInstaller sees
#: none of them. Only permissive licences: the frozen app is distributed (Apache-2.0); pylibjpeg-libjpeg (GPL-3.0)
#: is left out on purpose. The README ("Compressed DICOM") explains the choice.
DECODER_BACKENDS: dict[str, tuple[str, str, str]] = {
    "gdcm": ("python-gdcm", "GDCM BSD-3-Clause; wheel Apache-2.0",
             "JPEG Lossless (process 14, SV1), JPEG baseline/extended 8-bit, JPEG-LS, JPEG 2000, RLE"),
    "_gdcm": ("python-gdcm", "as gdcm", "gdcm's native package (_gdcm.gdcmswig and the libgdcm* libraries)"),
    "_gdcm.gdcmswig": ("python-gdcm", "as gdcm", "the SWIG wrapper gdcm.py star-imports"),
    "jpeg_ls": ("pyjpegls", "MIT; CharLS BSD-3-Clause", "JPEG-LS lossless and near-lossless"),
    "_CharLS": ("pyjpegls", "as jpeg_ls", "CharLS's extension module"),
    "PIL.Jpeg2KImagePlugin": ("pillow", "MIT-CMU; OpenJPEG BSD-2-Clause", "JPEG 2000"),
    "PIL.JpegImagePlugin": ("pillow", "MIT-CMU; libjpeg-turbo IJG/BSD-3-Clause", "JPEG baseline/extended 8-bit"),
}

#: watchdog picks the observer by platform inside ``watchdog.observers``; list every one for every platform
#: (one missing on this platform only produces a build warning)
WATCHDOG_HIDDEN_IMPORTS: tuple[str, ...] = (
    "watchdog.observers",
    "watchdog.observers.api",
    "watchdog.observers.polling",
    "watchdog.observers.inotify",
    "watchdog.observers.inotify_buffer",  # watchdog < 5
    "watchdog.observers.inotify_move_event_grouper",  # watchdog >= 5
    "watchdog.observers.inotify_c",
    "watchdog.observers.read_directory_changes",
    "watchdog.observers.winapi",
    "watchdog.observers.fsevents",
    "watchdog.observers.fsevents2",
    "watchdog.observers.kqueue",
    "watchdog.events",
    "watchdog.utils.dirsnapshot",
)

#: other lazily imported pieces: YAML's C loader, the PIL plugins the preview writer uses
OTHER_HIDDEN_IMPORTS: tuple[str, ...] = (
    "yaml", "yaml.cyaml", "yaml._yaml",
    "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont", "PIL.PngImagePlugin",
    "nibabel", "nibabel.parrec", "nibabel.nifti1",
    "highdicom", "highdicom.seg",
    "scipy.ndimage",
    "multiprocessing", "sqlite3",
)

#: OpenVINO's native libraries by role. Plugins and frontends are found by file name at run time.
OPENVINO_KEEP: dict[str, str] = {
    "openvino": "the runtime core",
    "openvino_c": "the C API (small; some plugins link it)",
    "openvino_intel_cpu_plugin": "CPU device (the default)",
    "openvino_intel_gpu_plugin": "GPU device (Intel iGPU of the console PC)",
    "openvino_auto_plugin": "AUTO / MULTI devices",
    "openvino_hetero_plugin": "HETERO device",
    "openvino_auto_batch_plugin": "BATCH device (AUTO may load it)",
    "openvino_ir_frontend": "reads the bundle's IR (.xml/.bin) -- the only frontend the runtime uses",
    "tbb": "threading (CPU plugin)", "tbbmalloc": "threading allocator", "tbbmalloc_proxy": "threading allocator",
    "tbbbind": "threading NUMA binding", "tbbbind_2_5": "threading NUMA binding", "hwloc": "topology (tbbbind)",
}
#: left out, each with the reason; the build's smoke test proves the frozen app reads IR and runs on CPU without
#: them. Set EDGESEG_FREEZE_KEEP_ALL=1 to keep them anyway (e.g. on a PC with an Intel NPU).
OPENVINO_DROP: dict[str, str] = {
    "openvino_intel_npu_plugin": "NPU device: not a target of the console-side PC (11 MB)",
    "openvino_onnx_frontend": "ONNX import: conversion happens on the build machine",
    "openvino_paddle_frontend": "PaddlePaddle import: never used",
    "openvino_pytorch_frontend": "PyTorch import: conversion happens on the build machine",
    "openvino_tensorflow_frontend": "TensorFlow import: never used",
    "openvino_tensorflow_lite_frontend": "TensorFlow Lite import: never used",
    "openvino_jax_frontend": "JAX import: never used",
    "openvino_gguf_frontend": "GGUF (LLM) import: never used",
}
#: file names of OpenVINO's native libraries on Windows, macOS and Linux (Linux names carry versions)
OPENVINO_LIBRARY_PATTERNS: tuple[str, ...] = ("*.dll", "*.dylib", "lib*.so", "lib*.so.*")
#: non-library files of OpenVINO the runtime reads: the plugin registry (where a wheel has one) and the GPU
#: plugin's kernel-tuning cache
OPENVINO_DATA_PATTERNS: tuple[str, ...] = ("**/plugins.xml", "libs/cache.json", "**/cache.json")

#: edgeseg modules every build must contain (the CLI skips a sub-command whose module is missing, silently)
EDGESEG_REQUIRED: tuple[str, ...] = (
    "edgeseg.cli", "edgeseg.bundle", "edgeseg.demo", "edgeseg.runtime.commands", "edgeseg.runtime.segment",
    "edgeseg.runtime.infer", "edgeseg.runtime.read", "edgeseg.runtime.write", "edgeseg.runtime.watch.commands",
)
#: edgeseg's packaged data the frozen app needs (demo bundle, demo MRI with its licence, labels)
EDGESEG_DATA_EXCLUDES: tuple[str, ...] = ("**/__pycache__/**", "**/*.pyc", "export/**", "**/*.pth")


def library_stem(name: str) -> str:
    """``libopenvino_intel_cpu_plugin.so.2641`` / ``openvino_intel_cpu_plugin.dll`` -> ``openvino_intel_cpu_plugin``;
    ``libtbb.so.12`` and ``tbb12.dll`` -> ``tbb``."""
    base = PurePath(name).name
    if base.startswith("lib"):
        base = base[3:]
    for suffix in (".so", ".dll", ".dylib", ".pdb"):
        cut = base.find(suffix)
        if cut > 0:
            base = base[:cut]
            break
    return re.sub(r"^tbb\d+$", "tbb", base)


def keep_all_openvino() -> bool:
    """EDGESEG_FREEZE_KEEP_ALL=1 keeps every OpenVINO plugin and frontend."""
    return os.environ.get("EDGESEG_FREEZE_KEEP_ALL", "") == "1"


def keep_openvino_library(path: str) -> bool:
    """Whether a native file of the openvino package goes into the frozen app.

    Unknown libraries are kept (a new OpenVINO release may add a dependency); only the listed drops are left out.
    """
    if keep_all_openvino():
        return True
    return library_stem(path) not in OPENVINO_DROP


def keep_openvino_module(name: str) -> bool:
    """Whether an ``openvino.*`` Python module goes in (the conversion side imports torch, tensorflow ...)."""
    if keep_all_openvino():
        return not name.startswith(("openvino.torch", "openvino.tools"))
    return not any(name == ex or name.startswith(ex + ".") for ex in EXCLUDES)


def keep_edgeseg_module(name: str) -> bool:
    """Every edgeseg module but the export stage (its modules import torch/onnx/nncf when used)."""
    return not (name == "edgeseg.export" or name.startswith("edgeseg.export."))


def excluded(name: str) -> bool:
    """Whether a module name is covered by :data:`EXCLUDES`."""
    return any(name == ex or name.startswith(ex + ".") for ex in EXCLUDES)


def hidden_imports() -> list[str]:
    """Every module name the spec lists as a hidden import (before PyInstaller's own submodule collection)."""
    names = [*PYDICOM_HIDDEN_IMPORTS, *DECODER_BACKENDS, *WATCHDOG_HIDDEN_IMPORTS, *OTHER_HIDDEN_IMPORTS]
    if sys.platform != "win32":
        names = [n for n in names if n not in ("watchdog.observers.read_directory_changes", "watchdog.observers.winapi")]
    if sys.platform != "darwin":
        names = [n for n in names if not n.startswith("watchdog.observers.fsevents")]
    if not sys.platform.startswith("linux"):
        names = [n for n in names if not n.startswith("watchdog.observers.inotify")]
    if sys.platform == "win32" or sys.platform.startswith("linux"):
        names = [n for n in names if n != "watchdog.observers.kqueue"]
    return list(dict.fromkeys(names))


def matches_any(path: str, patterns: tuple[str, ...]) -> bool:
    """fnmatch against any pattern, with ``**/`` also matching at the top."""
    p = path.replace("\\", "/")
    return any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p, pat[3:])) for pat in patterns)


def importable(names: list[str]) -> tuple[list[str], list[str]]:
    """(found, missing): which module names the current interpreter can find, without importing them fully.

    ``find_spec("a.b")`` imports the parent package ``a``; a parent that fails to import counts as missing.
    """
    import importlib.util

    found: list[str] = []
    missing: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent package is absent or broken
            spec = None
        (found if spec is not None else missing).append(name)
    return found, missing


def minified_json(datas: list[tuple[str, str]], out_dir: Path) -> list[tuple[str, str]]:
    """``datas`` (PyInstaller's (source, destination folder) pairs) with each ``.json`` file replaced by a copy
    without indentation or spaces in ``out_dir``: the same JSON value, smaller. highdicom's table of the standard's
    module attributes is 22.7 MB as shipped, 15.7 MB minified; highdicom reads it with ``json.loads``."""
    import json

    out: list[tuple[str, str]] = []
    for src, dest in datas:
        if not src.endswith(".json"):
            out.append((src, dest))
            continue
        with open(src, encoding="utf-8") as fh:
            value = json.load(fh)
        target = out_dir / dest / Path(src).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
        out.append((str(target), dest))
    return out


def strip_unpatched(folder: Path, log: Callable[[str], None] = print) -> tuple[int, int]:
    """Strip symbol tables from the ELF files in ``folder`` that no wheel-repair tool has rewritten (Linux).

    Stripping a library that auditwheel/patchelf rewrote (it then has an RPATH/RUNPATH, or sits in a
    ``<pkg>.libs`` folder, and its RPATH/RUNPATH points to ``$ORIGIN/...``) can corrupt it: numpy's vendored
    OpenBLAS then fails with "ELF load command address/offset not page-aligned". So only files outside ``*.libs``
    without an ``$ORIGIN`` search path are stripped (libpython, whose RUNPATH is the interpreter's absolute lib
    folder, the stdlib's extension modules, _CharLS, _yaml ...). Returns (files stripped, bytes saved);
    (0, 0) with a message when binutils (readelf, strip) are not installed.
    """
    import shutil
    import subprocess

    readelf, strip = shutil.which("readelf"), shutil.which("strip")
    if not (readelf and strip):
        log("strip: readelf/strip (binutils) not found; nothing stripped")
        return 0, 0
    count = saved = 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or any(part.endswith(".libs") for part in path.parts):
            continue
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        dyn = subprocess.run([readelf, "-d", "-S", "-W", str(path)], capture_output=True, text=True)
        if dyn.returncode != 0 or "$ORIGIN" in dyn.stdout or ".symtab" not in dyn.stdout:
            continue
        before = path.stat().st_size
        if subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True).returncode == 0:
            count += 1
            saved += before - path.stat().st_size
    return count, saved
