"""The freeze manifest (installer/freeze_manifest.py) against the packages installed here: no build needed.

PyInstaller only sees ``import`` statements; pydicom's decoders, OpenVINO's plugins and frontends, watchdog's
observers and edgeseg's own sub-commands are loaded by name. A new release that adds one must fail here, not in
the frozen program on the scanner PC.
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydicom import uid

from installer_helpers import INSTALLER, REPO


def _submodules(package: str) -> list[str]:
    mod = importlib.import_module(package)
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(mod.__path__))


@pytest.mark.parametrize("package", ["pydicom.pixels.decoders", "pydicom.pixels.encoders"])
def test_every_pydicom_pixel_module_is_a_hidden_import(manifest: ModuleType, package: str) -> None:
    listed = set(manifest.hidden_imports())
    modules = _submodules(package)
    assert modules, f"no modules found in {package}"
    assert package in listed
    missing = [m for m in modules if m not in listed]
    assert not missing, f"add to PYDICOM_HIDDEN_IMPORTS in installer/freeze_manifest.py: {missing}"


@pytest.mark.parametrize("package", ["pydicom.pixels.decoders", "pydicom.pixels.encoders"])
def test_every_module_pydicom_names_in_strings_is_listed(manifest: ModuleType, package: str) -> None:
    """pydicom's registries name their plugin modules as strings ("pydicom.pixels.decoders.gdcm", ...)."""
    base = Path(importlib.import_module(f"{package}.base").__file__)  # type: ignore[arg-type]
    named = set(re.findall(r"[\"'](pydicom\.pixels\.(?:de|en)coders\.\w+)[\"']", base.read_text(encoding="utf-8")))
    assert named, f"no module names found in {base}; has pydicom changed how it registers plugins?"
    missing = sorted(named - set(manifest.hidden_imports()))
    assert not missing, f"add to PYDICOM_HIDDEN_IMPORTS in installer/freeze_manifest.py: {missing}"


def test_jpeg_ls_backend_is_listed(manifest: ModuleType) -> None:
    """highdicom installs pyjpegls (import name jpeg_ls); the decoder imports it lazily."""
    pytest.importorskip("jpeg_ls")
    assert "jpeg_ls" in manifest.hidden_imports()


def _base_dependencies() -> set[str]:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}


def test_decoder_backends_are_base_dependencies_and_hidden_imports(manifest: ModuleType) -> None:
    """Each pixel-decoder backend is installed by the base install and frozen as a hidden import, and none is
    GPL (the frozen app is distributed)."""
    listed = set(manifest.hidden_imports())
    base = _base_dependencies()
    for module, (distribution, licence, _) in manifest.DECODER_BACKENDS.items():
        assert distribution.lower() in base, f"{distribution} (for {module}) is not a base dependency"
        assert module in listed
        assert "GPL" not in licence
    found, missing = manifest.importable(sorted(manifest.DECODER_BACKENDS))
    assert not missing, f"decoder backends not installed here: {missing}"
    assert not any(d.startswith("pylibjpeg") for d in base), "pylibjpeg-libjpeg is GPL-3.0: not in the base install"


#: the transfer syntaxes scanners and PACS send (issue 11): each needs a decoder in the base install
COMMON_SYNTAXES = (
    uid.JPEGLossless, uid.JPEGLosslessSV1,  # JPEG Lossless process 14, SV1
    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit,  # JPEG baseline, extended (8-bit; 12-bit: README)
    uid.JPEGLSLossless, uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless, uid.JPEG2000,  # lossless, lossy
    uid.RLELossless,
    uid.DeflatedExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
)


@pytest.mark.parametrize("syntax", COMMON_SYNTAXES)
def test_base_install_has_a_decoder_for_every_common_syntax(syntax: str) -> None:
    """Without the test extra's pylibjpeg, pydicom still has a plugin (or its own code) for each syntax."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    decoder = get_decoder(UID(syntax))
    assert decoder.is_available
    if decoder.is_encapsulated:
        plugins = set(decoder.available_plugins) - {"pylibjpeg"}
        assert plugins, f"{UID(syntax).name}: only pylibjpeg decodes it here"


def _openvino_libs() -> Path:
    ov = pytest.importorskip("openvino")
    libs = Path(ov.__file__).parent / "libs"
    if not libs.is_dir():
        pytest.skip(f"this OpenVINO wheel has no libs folder ({libs})")
    return libs


def test_every_openvino_plugin_and_frontend_library_is_classified(manifest: ModuleType) -> None:
    """Each plugin/frontend library of the installed OpenVINO is either kept or dropped with a reason."""
    names = sorted(p.name for p in _openvino_libs().iterdir() if re.search(r"_(plugin|frontend)\b", p.name))
    assert names
    known = set(manifest.OPENVINO_KEEP) | set(manifest.OPENVINO_DROP)
    unknown = [n for n in names if manifest.library_stem(n) not in known]
    assert not unknown, f"classify in OPENVINO_KEEP/OPENVINO_DROP of installer/freeze_manifest.py: {unknown}"


def test_every_frontend_openvino_reports_is_classified(manifest: ModuleType) -> None:
    """The frontends OpenVINO actually finds at run time (FrontEndManager), by name."""
    ov = pytest.importorskip("openvino")
    names = ov.frontend.FrontEndManager().get_available_front_ends()
    assert "ir" in names
    alias = {"tf": "tensorflow", "tflite": "tensorflow_lite"}
    known = set(manifest.OPENVINO_KEEP) | set(manifest.OPENVINO_DROP)
    unknown = [n for n in names if f"openvino_{alias.get(n, n)}_frontend" not in known]
    assert not unknown, f"classify these OpenVINO frontends in installer/freeze_manifest.py: {unknown}"
    assert "openvino_ir_frontend" in manifest.OPENVINO_KEEP


def test_every_openvino_python_frontend_module_is_classified(manifest: ModuleType) -> None:
    """openvino.frontend.<x> Python packages: excluded (conversion side) or collected (kept)."""
    pytest.importorskip("openvino")
    for module in _submodules("openvino.frontend"):
        if module == "openvino.frontend.frontend":
            continue
        assert manifest.excluded(module) or manifest.keep_openvino_module(module), module
        # nothing the runtime reads IR with lives there: all of them are left out
        assert manifest.excluded(module), f"{module} is collected; the runtime only reads IR"


def test_runtime_devices_and_ir_reader_are_kept(manifest: ModuleType) -> None:
    libs = [p.name for p in _openvino_libs().iterdir()]
    for stem in ("openvino", "openvino_intel_cpu_plugin", "openvino_ir_frontend"):
        hits = [n for n in libs if manifest.library_stem(n) == stem]
        assert hits, f"{stem} not in the installed OpenVINO"
        assert all(manifest.keep_openvino_library(h) for h in hits)
    gpu = [n for n in libs if manifest.library_stem(n) == "openvino_intel_gpu_plugin"]
    assert all(manifest.keep_openvino_library(h) for h in gpu), "the iGPU is a target device: keep its plugin"


@pytest.mark.parametrize("name, stem", [
    ("libopenvino_intel_cpu_plugin.so", "openvino_intel_cpu_plugin"),
    ("libopenvino_ir_frontend.so.2641", "openvino_ir_frontend"),
    ("openvino_ir_frontend.dll", "openvino_ir_frontend"),
    ("libopenvino.so.2641", "openvino"),
    ("libtbb.so.12", "tbb"),
    ("tbb12.dll", "tbb"),
    ("libtbbbind_2_5.so.3", "tbbbind_2_5"),
    ("libopenvino_intel_npu_plugin.dylib", "openvino_intel_npu_plugin"),
])
def test_library_stem(manifest: ModuleType, name: str, stem: str) -> None:
    assert manifest.library_stem(name) == stem


def test_versioned_library_names_match_the_collection_patterns(manifest: ModuleType) -> None:
    """PyInstaller's default patterns ('lib*.so') miss libopenvino_ir_frontend.so.2641: the frozen app then reads
    no IR ("Available frontends: ...")."""
    import fnmatch

    for name in ("libopenvino_ir_frontend.so.2641", "libopenvino_intel_cpu_plugin.so", "openvino.dll"):
        assert any(fnmatch.fnmatch(name, pat) for pat in manifest.OPENVINO_LIBRARY_PATTERNS), name


def test_watchdog_observers_of_this_platform_are_listed(manifest: ModuleType) -> None:
    listed = set(manifest.hidden_imports())
    wanted = {"watchdog.observers.polling", "watchdog.observers.api"}
    if sys.platform.startswith("linux"):
        wanted |= {"watchdog.observers.inotify", "watchdog.observers.inotify_c"}
    elif sys.platform == "win32":
        wanted |= {"watchdog.observers.read_directory_changes", "watchdog.observers.winapi"}
    assert wanted <= listed, wanted - listed
    found, _ = manifest.importable(sorted(wanted))
    assert set(found) == wanted, "a listed watchdog observer does not exist in the installed watchdog"
    # every observer module the installed watchdog has for this platform
    platform_specific = {"inotify": "linux", "read_directory_changes": "win32", "winapi": "win32",
                         "fsevents": "darwin", "fsevents2": "darwin", "kqueue": "bsd"}
    for module in _submodules("watchdog.observers"):
        short = module.rsplit(".", 1)[1]
        owner = next((v for k, v in platform_specific.items() if short.startswith(k)), None)
        if owner is None or sys.platform.startswith(owner):
            assert module in listed, f"add {module} to WATCHDOG_HIDDEN_IMPORTS"


def test_hidden_imports_exist_here(manifest: ModuleType) -> None:
    """Everything listed for this platform can be found, except backends of other package versions."""
    _, missing = manifest.importable(manifest.hidden_imports())
    allowed = {"watchdog.observers.inotify_buffer", "watchdog.observers.inotify_move_event_grouper"}
    assert set(missing) <= allowed, set(missing) - allowed


def test_heavy_packages_and_export_are_excluded(manifest: ModuleType) -> None:
    for name in ("torch", "torchvision", "onnx", "nncf", "nnunetv2", "timm", "matplotlib", "pandas",
                 "edgeseg.export", "edgeseg.export.commands", "openvino.tools.ovc", "openvino.frontend.pytorch"):
        assert manifest.excluded(name), name
    for name in ("edgeseg.runtime.segment", "openvino.runtime", "scipy.ndimage", "scipy.special", "pydicom"):
        assert not manifest.excluded(name), name
    assert not manifest.keep_edgeseg_module("edgeseg.export.commands")
    assert manifest.keep_edgeseg_module("edgeseg.runtime.watch.commands")


def test_required_edgeseg_modules_exist(manifest: ModuleType) -> None:
    _, missing = manifest.importable(list(manifest.EDGESEG_REQUIRED))
    assert not missing, missing


def test_runtime_scipy_use_stays_within_what_is_kept(manifest: ModuleType) -> None:
    """The frozen app keeps scipy.ndimage/special/_lib only: the runtime must not import other scipy parts."""
    pattern = re.compile(r"^\s*(?:from|import)\s+(scipy(?:\.\w+)*)", re.M)
    used = set()
    for folder in ("runtime", "bundle", "edgeseg"):
        for path in (REPO / folder).rglob("*.py"):
            used |= set(pattern.findall(path.read_text(encoding="utf-8")))
    bad = sorted(u for u in used if manifest.excluded(u))
    assert not bad, f"the runtime imports {bad}, which installer/freeze_manifest.py excludes"


def test_entry_point_calls_freeze_support_before_the_cli() -> None:
    tree = ast.parse((INSTALLER / "edgeseg_main.py").read_text(encoding="utf-8"))
    main_block = next(n for n in tree.body if isinstance(n, ast.If))
    statements = [ast.unparse(n) for n in main_block.body]
    first = next(i for i, s in enumerate(statements) if "freeze_support" in s or "edgeseg" in s)
    assert statements[first] == "multiprocessing.freeze_support()", statements
    assert any("from edgeseg.cli import main" in s for s in statements[first + 1:]), statements


def test_spec_is_one_folder_and_uses_the_manifest() -> None:
    spec = (INSTALLER / "edgeseg.spec").read_text(encoding="utf-8")
    assert "COLLECT(" in spec and "exclude_binaries=True" in spec, "one-folder build expected"
    assert "import freeze_manifest" in spec
    assert "edgeseg_main.py" in spec
    assert "excludes=list(fm.EXCLUDES)" in spec


def test_minified_json_is_the_same_value(manifest: ModuleType, tmp_path: Path) -> None:
    """highdicom's tables go into the frozen app minified; the values must not change."""
    import json

    import highdicom

    src = Path(highdicom.__file__).parent / "_standard" / "iod_module_map.json"
    other = tmp_path / "icc.bin"
    other.write_bytes(b"\x00\x01")
    out = manifest.minified_json([(str(src), "highdicom/_standard"), (str(other), "highdicom")], tmp_path / "min")
    assert out[1] == (str(other), "highdicom")
    small = Path(out[0][0])
    assert out[0][1] == "highdicom/_standard" and small.name == src.name
    assert json.loads(small.read_text(encoding="utf-8")) == json.loads(src.read_text(encoding="utf-8"))
    assert small.stat().st_size < src.stat().st_size


def test_minified_json_keeps_a_file_with_duplicate_keys(manifest: ModuleType, tmp_path: Path) -> None:
    """Parsers differ in which of two equal keys they keep: such a file goes in unchanged."""
    src = tmp_path / "dup.json"
    src.write_text('{"a": 1,\n "a": 2}', encoding="utf-8")
    assert manifest.minified_json([(str(src), "x")], tmp_path / "min") == [(str(src), "x")]


def test_optional_excludes_are_excluded_and_the_runtime_does_not_import_them(manifest: ModuleType) -> None:
    """ssl, readline ... are left out because nothing the runtime runs needs them; build.py checks that collected
    code imports them only inside try/except ImportError."""
    assert all(manifest.excluded(name) for name in manifest.OPTIONAL_EXCLUDES)
    names = "|".join(re.escape(n) for n in manifest.OPTIONAL_EXCLUDES)
    pattern = re.compile(rf"^\s*(?:from|import)\s+({names})\b", re.M)
    used = set()
    for folder in ("runtime", "bundle", "edgeseg"):
        for path in (REPO / folder).rglob("*.py"):
            if "export" not in path.relative_to(REPO).parts:
                used |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert not used, f"the runtime imports {sorted(used)}, which installer/freeze_manifest.py leaves out"


def _pil_modules() -> list[str]:
    pil = pytest.importorskip("PIL")
    return sorted(f"PIL.{m.name}" for m in pkgutil.iter_modules(pil.__path__))


def test_pillow_plugins_the_runtime_uses_are_kept(manifest: ModuleType) -> None:
    """PNG (preview), JPEG and JPEG 2000 (pydicom's pillow decoder, highdicom), Image.preinit's five, and every
    plugin a kept plugin imports; the rest of Pillow's file-format plugins are left out."""
    modules = _pil_modules()
    dropped = manifest.pillow_plugin_excludes(modules)
    kept = set(manifest.PILLOW_PLUGINS_KEEP)
    assert kept <= set(modules), f"not in the installed Pillow: {sorted(kept - set(modules))}"
    assert not kept & set(dropped)
    assert dropped and all(d.endswith("ImagePlugin") for d in dropped)
    for name in ("Png", "Jpeg", "Jpeg2K", "Bmp", "Gif", "Ppm"):
        assert f"PIL.{name}ImagePlugin" in kept
    assert {m for m in manifest.DECODER_BACKENDS if m.startswith("PIL.")} <= kept
    import PIL

    folder = Path(PIL.__file__).parent
    for plugin in sorted(kept):
        text = (folder / f"{plugin.split('.')[1]}.py").read_text(encoding="utf-8")
        imported = set(re.findall(r"^\s*from \.(\w+ImagePlugin) import", text, re.M))
        for names in re.findall(r"^\s*from \. import ([\w, ]+)$", text, re.M):
            imported |= {n.strip() for n in names.split(",") if n.strip().endswith("ImagePlugin")}
        missing = sorted(f"PIL.{n}" for n in imported if f"PIL.{n}" not in kept)
        assert not missing, f"{plugin} imports {missing}: add them to PILLOW_PLUGINS_KEEP"


def _needed(path: Path) -> list[str]:
    import shutil
    import subprocess

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run([readelf, "-d", "-W", str(path)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF dynamic sections")
def test_no_kept_openvino_library_links_a_dropped_one(manifest: ModuleType) -> None:
    """libopenvino_c and tbbmalloc_proxy are left out because nothing kept links them (nor a frontend/plugin)."""
    libs = _openvino_libs()
    kept = [p for p in sorted(libs.iterdir())
            if p.is_file() and ".so" in p.name and manifest.keep_openvino_library(p.name)]
    assert kept
    for path in [*kept, *sorted(libs.parent.glob("_pyopenvino*.so"))]:
        dropped = [n for n in _needed(path) if manifest.library_stem(n) in manifest.OPENVINO_DROP]
        assert not dropped, f"{path.name} links {dropped}, which installer/freeze_manifest.py leaves out"


def _strip_copy(src: Path, dst: Path) -> None:
    import shutil
    import subprocess

    strip = shutil.which("strip")
    if strip is None:
        pytest.skip("strip (binutils) is not installed")
    subprocess.run([strip, "--strip-unneeded", "-o", str(dst), str(src)], check=True, capture_output=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF files")
def test_elf_image_change_accepts_a_stripped_patched_library_that_loads(manifest: ModuleType, tmp_path: Path) -> None:
    """Pillow's _imaging (patched by auditwheel, 2.6 MB of debug information): a stripped copy the check accepts
    loads; the check rejects a changed code byte, a LOAD segment moved off its page offset, and a non-ELF file."""
    import ctypes
    import struct

    imaging = pytest.importorskip("PIL._imaging")  # also loads its vendored libraries for the copy below
    src = Path(imaging.__file__)
    copy = tmp_path / src.name
    _strip_copy(src, copy)
    before, after = src.read_bytes(), copy.read_bytes()
    assert manifest.elf_image_change(before, before) is None
    change = manifest.elf_image_change(before, after)
    if change is None:
        ctypes.CDLL(str(copy))

    elf = manifest._Elf64(after)
    text = next(s for s in manifest._Elf64(before).sh if s[2] & 0x4 and s[5] > 16)  # executable, allocated
    load = next(p for p in elf.ph if p[0] == 1 and p[3] <= text[3] < p[3] + p[5])
    offset = load[2] + (text[3] - load[3]) + 8
    broken = bytearray(after)
    broken[offset] ^= 0xFF
    assert "differs" in (manifest.elf_image_change(before, bytes(broken)) or "")

    phoff, phentsize = struct.unpack_from("<Q", after, 0x20)[0], struct.unpack_from("<H", after, 0x36)[0]
    index = [i for i, p in enumerate(elf.ph) if p[0] == 1][1]
    moved = bytearray(after)
    struct.pack_into("<Q", moved, phoff + index * phentsize + 8, elf.ph[index][2] + 8)
    assert "congruent" in (manifest.elf_image_change(before, bytes(moved)) or "")

    assert "not comparable" in (manifest.elf_image_change(before, b"not an ELF file") or "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF files")
def test_elf_image_change_rejects_the_stripped_openblas(manifest: ModuleType, tmp_path: Path) -> None:
    """The case that kept patched files unstripped: binutils' strip leaves numpy's OpenBLAS with LOAD segments
    off their page offsets ("ELF load command address/offset not page-aligned"). The check reports it, or the
    copy it accepts loads."""
    import ctypes

    import numpy

    libs = sorted((Path(numpy.__file__).parent.parent / "numpy.libs").glob("lib*openblas*.so*"))
    if not libs:
        pytest.skip("this numpy has no vendored OpenBLAS")
    copy = tmp_path / libs[0].name
    _strip_copy(libs[0], copy)
    change = manifest.elf_image_change(libs[0].read_bytes(), copy.read_bytes())
    if change is None:
        ctypes.CDLL(str(copy))


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_link_duplicate_libraries(manifest: ModuleType, tmp_path: Path) -> None:
    """numpy.libs/ and scipy.libs/ both vendor libgfortran: the second copy becomes a link to the first; a
    different library of the same name and size, and data files, stay as they are."""
    lib = b"\x7fELF" + bytes(range(256)) * 40
    (tmp_path / "numpy.libs").mkdir()
    (tmp_path / "scipy.libs").mkdir()
    (tmp_path / "other.libs").mkdir()
    (tmp_path / "numpy.libs" / "libgfortran-1.so.5.0.0").write_bytes(lib)
    (tmp_path / "scipy.libs" / "libgfortran-1.so.5.0.0").write_bytes(lib)
    (tmp_path / "other.libs" / "libgfortran-1.so.5.0.0").write_bytes(lib[:-1] + b"\x01")
    (tmp_path / "numpy.libs" / "LICENSE.txt").write_bytes(lib)
    (tmp_path / "scipy.libs" / "LICENSE.txt").write_bytes(lib)
    links, saved = manifest.link_duplicate_libraries(tmp_path)
    assert (links, saved) == (1, len(lib))
    linked = tmp_path / "scipy.libs" / "libgfortran-1.so.5.0.0"
    assert linked.is_symlink() and os.readlink(linked) == os.path.join("..", "numpy.libs", "libgfortran-1.so.5.0.0")
    assert linked.read_bytes() == lib
    assert not (tmp_path / "numpy.libs" / "libgfortran-1.so.5.0.0").is_symlink()
    assert not (tmp_path / "other.libs" / "libgfortran-1.so.5.0.0").is_symlink()
    assert not (tmp_path / "scipy.libs" / "LICENSE.txt").is_symlink()
    assert manifest.link_duplicate_libraries(tmp_path) == (0, 0)


def test_pynetdicom_is_in_the_frozen_app_with_ssl(manifest: ModuleType) -> None:
    """The DICOM node's pynetdicom is listed (the frozen app carries it however the node imports it), and ssl is not
    left out: pynetdicom.ae imports it unguarded, so a frozen app without ssl could not import pynetdicom at all."""
    import importlib.util

    hidden = manifest.hidden_imports()
    assert "pynetdicom" in hidden and "pynetdicom.ae" in hidden
    assert not manifest.excluded("pynetdicom") and not manifest.excluded("pynetdicom.sop_class")
    assert manifest.excluded("pynetdicom.apps") and manifest.excluded("pynetdicom.tests")
    spec = importlib.util.find_spec("pynetdicom.ae")
    assert spec is not None and spec.origin is not None
    assert re.search(r"^from ssl import", Path(spec.origin).read_text(encoding="utf-8"), re.M)
    assert not manifest.excluded("ssl") and "ssl" not in manifest.OPTIONAL_EXCLUDES


def test_the_one_shot_command_is_required(manifest: ModuleType) -> None:
    assert "edgeseg.runtime.oneshot.commands" in manifest.EDGESEG_REQUIRED
