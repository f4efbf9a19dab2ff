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
    # Standard-library parts the runtime never uses; every import of them in what is collected sits in
    # try/except ImportError (PyInstaller's warn-edgeseg.txt lists those importers as "optional"):
    # (``ssl`` is kept: pynetdicom, the DICOM node, imports it unguarded in ``pynetdicom.ae`` and offers TLS; see
    # PYNETDICOM_HIDDEN_IMPORTS.)
    # * interactive line editing (pdb, cmd and code import it in try/except); takes libreadline and libtinfo
    #   along (0.6 MB). The frozen app has no interactive console.
    "readline",
    # * the pure-Python decimal: ``decimal`` imports it only when the C ``_decimal`` (collected) is missing
    "_pydecimal",
    # * help() topic texts: pydoc imports them in try/except, only for interactive help()
    "pydoc_data",
    # numpy's test helper extension, added by PyInstaller's numpy hook; only numpy's own test suite imports it
    "numpy._core._multiarray_tests",
    # pynetdicom's example applications (storescp ...; ``python -m pynetdicom``), its tests and benchmarks
    "pynetdicom.apps", "pynetdicom.tests", "pynetdicom.benchmarks",
)

#: the modules of :data:`EXCLUDES` that collected code does import, each time inside try/except ImportError;
#: build.py stops the build when PyInstaller's warn file shows one imported any other way
OPTIONAL_EXCLUDES: tuple[str, ...] = ("readline", "_pydecimal", "pydoc_data")

#: Pillow's image-file plugins the runtime reads or writes through: PNG (the preview), JPEG and JPEG 2000
#: (pydicom's pillow decoder, highdicom's frame encoder; MPO is JPEG's multi-picture variant, which imports TIFF
#: for its EXIF block) and the ones ``Image.preinit`` imports first. Every other ``PIL.*ImagePlugin`` is left out
#: (:func:`pillow_plugin_excludes`): ``Image.init`` imports each plugin in try/except ImportError, so a missing one
#: only means Pillow does not recognise that file format; the runtime never opens image files with Pillow.
PILLOW_PLUGINS_KEEP: tuple[str, ...] = (
    "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.Jpeg2KImagePlugin", "PIL.MpoImagePlugin",
    "PIL.TiffImagePlugin", "PIL.BmpImagePlugin", "PIL.GifImagePlugin", "PIL.PpmImagePlugin",
)

#: pydicom's data files the frozen app ships. The colour palettes are read by ``apply_color_lut(palette=...)``.
#: Left out: ``charset_files/`` (test files for pydicom's own test suite and CLI) and ``urls.json``/``hashes.json``
#: (the index of pydicom's downloadable test data; the scanner PC has no network use).
PYDICOM_DATA_INCLUDES: tuple[str, ...] = ("data/palettes/*",)

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

#: pynetdicom (the DICOM node: Storage SCP/SCU, C-ECHO; MIT): listed so the frozen app carries it whether or not
#: the node's modules import it at their top (``edgeseg run`` never uses the network, the watcher's node does). It
#: imports ``ssl`` unguarded (``pynetdicom.ae``: ``from ssl import SSLContext``), which is why ssl is not excluded.
PYNETDICOM_HIDDEN_IMPORTS: tuple[str, ...] = (
    "pynetdicom", "pynetdicom.ae", "pynetdicom.association", "pynetdicom.events", "pynetdicom.sop_class",
    "pynetdicom.service_class", "pynetdicom.service_class_n", "pynetdicom._handlers", "pynetdicom.transport",
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
    "openvino_intel_cpu_plugin": "CPU device (the default)",
    "openvino_intel_gpu_plugin": "GPU device (Intel iGPU of the console PC)",
    "openvino_auto_plugin": "AUTO / MULTI devices",
    "openvino_hetero_plugin": "HETERO device",
    "openvino_auto_batch_plugin": "BATCH device (AUTO may load it)",
    "openvino_ir_frontend": "reads the bundle's IR (.xml/.bin) -- the only frontend the runtime uses",
    "tbb": "threading (CPU plugin)", "tbbmalloc": "threading allocator",
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
    "openvino_c": "the C API: the runtime uses the Python bindings (_pyopenvino links libopenvino itself), and no "
                  "kept plugin or frontend links it (readelf -d: no NEEDED entry names it) (0.4 MB)",
    "tbbmalloc_proxy": "TBB's malloc replacement, loaded only through LD_PRELOAD or by linking it; nothing kept "
                       "links it (libtbbmalloc, the allocator itself, stays)",
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
    "edgeseg.runtime.demo", "edgeseg.runtime.oneshot.commands",
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
    names = [*PYDICOM_HIDDEN_IMPORTS, *DECODER_BACKENDS, *WATCHDOG_HIDDEN_IMPORTS, *PYNETDICOM_HIDDEN_IMPORTS,
             *OTHER_HIDDEN_IMPORTS]
    if sys.platform != "win32":
        names = [n for n in names
                 if n not in ("watchdog.observers.read_directory_changes", "watchdog.observers.winapi")]
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


def pillow_plugin_excludes(pil_modules: list[str]) -> list[str]:
    """The ``PIL.*ImagePlugin`` modules among ``pil_modules`` (the installed Pillow's) that are not in
    :data:`PILLOW_PLUGINS_KEEP`: the spec adds them to PyInstaller's excludes."""
    return sorted(m for m in pil_modules if re.fullmatch(r"PIL\.\w+ImagePlugin", m) and m not in PILLOW_PLUGINS_KEEP)


def _json_object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:3]}")
    return dict(pairs)


def minified_json(datas: list[tuple[str, str]], out_dir: Path) -> list[tuple[str, str]]:
    """``datas`` (PyInstaller's (source, destination folder) pairs) with each ``.json`` file replaced by a copy
    without indentation or spaces in ``out_dir``: the same JSON value, smaller. highdicom's table of the standard's
    module attributes is 22.7 MB as shipped, 15.7 MB minified (highdicom reads it with ``json.loads``); OpenVINO's
    GPU kernel-tuning cache ``libs/cache.json`` 8.8 MB, 7.1 MB minified (the GPU plugin parses it as JSON). A file
    with a duplicate key in an object is copied unchanged: parsers differ in which of the two they keep, and
    re-writing it would keep only the last."""
    import json

    out: list[tuple[str, str]] = []
    for src, dest in datas:
        if not src.endswith(".json"):
            out.append((src, dest))
            continue
        with open(src, encoding="utf-8") as fh:
            text = fh.read()
        try:
            value = json.loads(text, object_pairs_hook=_json_object_without_duplicate_keys)
        except ValueError:
            out.append((src, dest))
            continue
        target = out_dir / dest / Path(src).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
        out.append((str(target), dest))
    return out


# ------------------------------------------------------------------------------------------ ELF stripping (Linux)

_PT_LOAD, _PT_DYNAMIC = 1, 2
_SHF_ALLOC, _SHF_TLS, _SHT_NOBITS = 0x2, 0x400, 8
#: DT_* tags whose value is an address in the loaded image (PLTGOT, HASH, STRTAB, SYMTAB, RELA, INIT, FINI, REL,
#: JMPREL, INIT_ARRAY, FINI_ARRAY, PREINIT_ARRAY, GNU_HASH, VERSYM, VERDEF, VERNEED, RELR)
_DT_ADDRESS_TAGS = frozenset({3, 4, 5, 6, 7, 12, 13, 17, 23, 25, 26, 32, 0x6FFFFEF5, 0x6FFFFFF0, 0x6FFFFFFC,
                              0x6FFFFFFE, 36})


class _Elf64:
    """The parts of an ELF64 little-endian file the dynamic loader and :func:`elf_image_change` look at."""

    def __init__(self, data: bytes) -> None:
        import struct

        if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not an ELF64 little-endian file")
        self.data = data
        (self.type, self.machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         _) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        #: (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
        self.ph = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
        #: (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
        self.sh = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def image(self, vaddr: int, size: int) -> bytes | None:
        """The bytes the loader maps at ``vaddr`` (file bytes, then zeros up to p_memsz); None outside one LOAD."""
        for p_type, _, offset, va, _, filesz, memsz, _ in self.ph:
            if p_type == _PT_LOAD and va <= vaddr and vaddr + size <= va + memsz:
                rel = vaddr - va
                backed = self.data[offset + rel:offset + min(rel + size, filesz)] if rel < filesz else b""
                return backed + bytes(size - len(backed))
        return None

    def dynamic_addresses(self) -> list[int]:
        import struct

        out: list[int] = []
        for p_type, _, offset, _, _, filesz, _, _ in self.ph:
            if p_type != _PT_DYNAMIC:
                continue
            for i in range(filesz // 16):
                tag, value = struct.unpack_from("<qQ", self.data, offset + 16 * i)
                if tag == 0:
                    break
                if tag in _DT_ADDRESS_TAGS:
                    out.append(value)
        return out


def elf_image_change(before: bytes, after: bytes) -> str | None:
    """None when the dynamic loader builds the same process image from ``after`` as from ``before``; otherwise
    what differs. Used to accept a stripped copy of a library that a wheel-repair tool (auditwheel/patchelf)
    rewrote, where binutils' strip sometimes produces a broken file (numpy's OpenBLAS: a LOAD segment whose file
    offset is no longer congruent to its address, "ELF load command address/offset not page-aligned").

    Same image means: same ELF type, machine and entry point; the same program headers in the same order (type,
    flags, address and alignment; the size too except for LOAD segments, whose file offset may move); every LOAD
    segment inside the file and its offset congruent to its address modulo the alignment and the page size; every
    allocated section of ``before`` (code, data, dynamic symbols, relocations, the dynamic section ...) holding
    the same bytes at the same address in ``after``'s LOAD segments (.bss: zeros); and every address the dynamic
    section points to lying inside an allocated section (so no live byte sits outside the sections compared).
    What may differ is what the loader never reads: section headers, symbol tables and debug sections, and bytes
    no section covers (e.g. what patchelf left behind when it moved .dynstr). Only ELF64 little-endian files are
    compared; anything else is reported as a change.
    """
    try:
        a, b = _Elf64(before), _Elf64(after)
    except Exception as err:  # ValueError, struct.error (a truncated file) ...
        return f"not comparable: {err}"
    if (a.type, a.machine, a.entry, len(a.ph)) != (b.type, b.machine, b.entry, len(b.ph)):
        return "ELF header differs (type, machine, entry point or number of program headers)"
    for pa, pb in zip(a.ph, b.ph):
        if (pa[0], pa[1], pa[3], pa[7]) != (pb[0], pb[1], pb[3], pb[7]):
            return f"program header differs: {pa} -> {pb}"
        if pb[0] != _PT_LOAD:
            if pa[6] != pb[6]:
                return f"program header size differs: {pa} -> {pb}"
            continue
        if pb[2] + pb[5] > len(after) or pb[6] < pb[5]:
            return f"LOAD segment beyond the end of the file: {pb}"
        if (pb[2] - pb[3]) % max(pb[7], 4096):
            return f"LOAD segment offset not congruent to its address: {pb}"
    spans = []
    for _, sh_type, flags, addr, offset, size, *_ in a.sh:
        if not flags & _SHF_ALLOC or size == 0:
            continue
        if sh_type == _SHT_NOBITS and flags & _SHF_TLS:  # .tbss takes no room in the image (PT_TLS says its size)
            continue
        spans.append((addr, addr + size))
        want = bytes(size) if sh_type == _SHT_NOBITS else before[offset:offset + size]
        if b.image(addr, size) != want:
            return f"allocated section at {addr:#x} differs"
    outside = [v for v in a.dynamic_addresses() if not any(lo <= v <= hi for lo, hi in spans)]
    if outside:
        return f"the dynamic section points outside the allocated sections: {[hex(v) for v in outside]}"
    return None


def strip_elf_files(folder: Path, log: Callable[[str], None] = print) -> dict[str, int]:
    """Strip symbol tables and debug sections from the ELF files in ``folder`` (Linux; ``strip --strip-unneeded``
    keeps the dynamic symbols the loader uses).

    Files no wheel-repair tool rewrote (outside ``*.libs``, no ``$ORIGIN`` search path: libpython, the stdlib's
    extension modules, _CharLS, _yaml ...) are stripped in place, as binutils expects them. A file auditwheel/
    patchelf rewrote is stripped into a copy, and the copy replaces it only when :func:`elf_image_change` finds
    the loaded image unchanged: strip can break such files (PyInstaller's ``strip=True`` broke numpy's OpenBLAS,
    which the check rejects), and Pillow's extensions carry 3 MB of debug information otherwise. Returns counts
    ``stripped`` (in place), ``verified`` (patched, image unchanged), ``kept`` (patched, strip would change the
    image: left as they are) and ``saved`` (bytes); all 0 with a message when binutils (readelf, strip) are not
    installed.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    result = {"stripped": 0, "verified": 0, "kept": 0, "saved": 0}
    readelf, strip = shutil.which("readelf"), shutil.which("strip")
    if not (readelf and strip):
        log("strip: readelf/strip (binutils) not found; nothing stripped")
        return result
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        info = subprocess.run([readelf, "-d", "-S", "-W", str(path)], capture_output=True, text=True)
        if info.returncode != 0 or not (".symtab" in info.stdout or " .debug_" in info.stdout):
            continue
        before = path.stat().st_size
        patched = "$ORIGIN" in info.stdout or any(part.endswith(".libs") for part in path.parts)
        if not patched:
            if subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True).returncode == 0:
                result["stripped"] += 1
                result["saved"] += before - path.stat().st_size
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".stripped", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            done = subprocess.run([strip, "--strip-unneeded", "-o", str(tmp), str(path)], capture_output=True)
            change = elf_image_change(path.read_bytes(), tmp.read_bytes()) if done.returncode == 0 else "strip failed"
            if change is None and tmp.stat().st_size < before:
                shutil.copymode(path, tmp)
                os.replace(tmp, path)
                result["verified"] += 1
                result["saved"] += before - path.stat().st_size
            else:
                result["kept"] += 1
        finally:
            tmp.unlink(missing_ok=True)
    return result


#: shared-library file names :func:`link_duplicate_libraries` considers
_SHARED_LIBRARY = re.compile(r".+\.(so(\.[\w.]+)?|dylib)$")


def link_duplicate_libraries(folder: Path) -> tuple[int, int]:
    """Replace each shared library in ``folder`` that is byte-identical to one of the same name elsewhere in the
    folder by a relative symbolic link to it (Linux). Wheel-repair tools vendor a library into every wheel that
    needs it: numpy.libs/ and scipy.libs/ both carry libgfortran and libquadmath (3.1 MB). Each copy is found
    through its folder's ``$ORIGIN`` search path, which the link keeps working; the loader then maps one file.
    The first path in sorted order stays a file. Returns (links made, bytes saved)."""
    import hashlib
    import os

    groups: dict[tuple[str, int], list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or not _SHARED_LIBRARY.fullmatch(path.name):
            continue
        groups.setdefault((path.name, path.stat().st_size), []).append(path)
    links = saved = 0
    for (_, size), paths in groups.items():
        if len(paths) < 2:
            continue
        by_digest: dict[str, Path] = {}
        for path in paths:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            keep = by_digest.setdefault(digest, path)
            if keep is path:
                continue
            path.unlink()
            path.symlink_to(os.path.relpath(keep, path.parent))
            links += 1
            saved += size
    return links, saved
