"""Build the frozen edgeseg runtime (PyInstaller, one folder), smoke-test it and pack the installable archive.

    python installer/build.py                      # venv in .venv-freeze/, output in installer/dist/
    python installer/build.py --venv /tmp/v --dist /tmp/d --report build.json
    python installer/build.py --skip-venv          # freeze with THIS interpreter (must be runtime-only)

Steps (each prints one line, timings at the end):

1. a runtime-only virtual environment: ``python -m venv``, ``pip install <repo> pyinstaller`` (no extras); the
   build stops if torch, onnx, nncf or nnunetv2 can be imported there, or if the installed edgeseg lacks a module
   of the source tree (a package missing from pyproject.toml's package list);
2. PyInstaller with ``installer/edgeseg.spec`` -> ``<dist>/edgeseg/``;
3. checks of the folder: no torch inside, OpenVINO's CPU plugin and IR frontend present; size and breakdown;
4. smoke tests of the frozen program: ``--version``, ``export`` (must say it is not in this build, exit 9),
   ``doctor`` (must list the CPU device), ``segment`` of the packaged demo MRI, ``run`` (one-shot: input folder ->
   output folder), ``watch --once`` on a folder with the MRI dropped in, then the time from start to "watcher
   started" with the model cache warm;
5. the archive ``<dist>/edgeseg-<version>-<platform>.tar.gz`` (``.zip`` on Windows): the frozen folder, the
   default bundle, watch_config.yaml, install/uninstall scripts, the systemd unit and INSTALL.txt.

``--windows-wheels`` first resolves the same dependency set as ``win_amd64`` binary wheels
(``installer/windows_wheels.py``): the Windows app cannot be built here, but its dependencies can be proven to exist.

Exit code 0 when everything passed; 1 with the failing step named otherwise. Needs only the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "edgeseg"
WINDOWS = sys.platform == "win32"
#: size goal of the frozen folder
SIZE_GOAL_MB = 300
#: import names that must not be importable in the freezing environment (the frozen app would pull them in)
FORBIDDEN = ("torch", "torchvision", "onnx", "onnxruntime", "nncf", "nnunetv2", "timm")
#: the source folders of the import packages (pyproject.toml's [tool.setuptools] package-dir); export stays out
SOURCE_PACKAGES = {"edgeseg": "edgeseg", "edgeseg.bundle": "bundle", "edgeseg.runtime": "runtime"}


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def version() -> str:
    text = (REPO / "edgeseg" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise BuildError("no __version__ in edgeseg/__init__.py")
    return match.group(1)


def platform_tag() -> str:
    """linux-x86_64, win-amd64, macosx-14.0-arm64 ..."""
    return sysconfig.get_platform().replace(" ", "_")


def run(cmd: list[str], *, timeout: float = 900, env: dict[str, str] | None = None, cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise BuildError(f"command failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return proc


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if WINDOWS else "bin/python")


# ------------------------------------------------------------------------------------------------ environment


def make_venv(venv: Path, fresh: bool) -> Path:
    """Create (or reuse) the runtime-only venv and install the repo without extras plus PyInstaller."""
    if fresh and venv.exists():
        log(f"removing {venv} (--fresh)")
        shutil.rmtree(venv)
    py = venv_python(venv)
    if not py.exists():
        log(f"creating venv {venv}")
        run([sys.executable, "-m", "venv", str(venv)])
    log("pip install <repo> pyinstaller (no extras)")
    run([str(py), "-m", "pip", "install", "-q", str(REPO), "pyinstaller>=6.0"], timeout=1800)
    # a reused venv may hold an older build of edgeseg with the same version number: replace it
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO)], timeout=900)
    return py


_CHECK_ENV = r"""
import importlib.util, json, sys
forbidden, wanted = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
print(json.dumps({"forbidden": [n for n in forbidden if found(n)], "missing": [n for n in wanted if not found(n)],
                  "pyinstaller": found("PyInstaller"), "python": sys.version.split()[0]}))
"""


def source_modules() -> list[str]:
    """Every module of the runtime side of the source tree, as the installed package must provide it."""
    names = []
    for package, folder in SOURCE_PACKAGES.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if "__pycache__" in rel.parts or (package == "edgeseg" and rel.parts[0] in SOURCE_PACKAGES.values()):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            names.append(".".join([package, *parts]))
    return names


def check_env(py: Path) -> dict[str, Any]:
    """Fail unless the environment is runtime-only, has PyInstaller and holds every runtime module of the repo."""
    wanted = source_modules()
    proc = run([str(py), "-c", _CHECK_ENV, json.dumps(FORBIDDEN), json.dumps(wanted)], cwd=Path(tempfile.gettempdir()))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["forbidden"]:
        raise BuildError(f"{py} is not runtime-only: it can import {', '.join(info['forbidden'])}. Freeze from a "
                         "clean venv (drop --skip-venv, or use --fresh): PyInstaller would pull them in.")
    if not info["pyinstaller"]:
        raise BuildError(f"PyInstaller is not installed for {py}: pip install 'edgeseg[installer]'")
    if info["missing"]:
        raise BuildError("the installed edgeseg lacks modules of the source tree: " + ", ".join(info["missing"])
                         + ". Add their packages to [tool.setuptools] packages in pyproject.toml.")
    demo = REPO / "edgeseg" / "demo"
    log(f"environment OK: Python {info['python']}, no {'/'.join(FORBIDDEN[:4])}..., {len(wanted)} modules")
    if not (demo / "bundle" / "bundle.json").is_file():
        log("WARNING: no demo bundle (edgeseg/demo/bundle/bundle.json): the frozen app's `--bundle demo` will not "
            "work; smoke tests use --smoke-bundle")
    return info


# ------------------------------------------------------------------------------------------------------ freeze


def freeze(py: Path, dist: Path, work: Path) -> float:
    spec = HERE / "edgeseg.spec"
    log(f"PyInstaller {spec.name} -> {dist / NAME}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = run([str(py), "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN", "--distpath",
                str(dist), "--workpath", str(work), str(spec)], timeout=3600, cwd=work.parent)
    # (not cwd=REPO: the repo root's edgeseg/ folder would shadow the installed package, which alone holds
    # edgeseg.runtime and edgeseg.bundle -- the spec refuses such a build)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("edgeseg.spec:"):
            log(line)
    return time.perf_counter() - t0


def check_optional_excludes(work: Path) -> None:
    """The modules ``freeze_manifest.OPTIONAL_EXCLUDES`` leaves out although collected code imports them (ssl,
    readline ...) must be imported only inside try/except ImportError, which PyInstaller's warn file marks
    "optional". A package release that imports one unguarded would fail at run time: stop the build instead."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("freeze_manifest", HERE / "freeze_manifest.py")
    assert spec is not None and spec.loader is not None
    manifest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manifest)
    warn = work / NAME / f"warn-{NAME}.txt"
    if not warn.is_file():
        log(f"WARNING: no PyInstaller warn file ({warn}): the optional excludes were not checked")
        return
    bad = []
    for line in warn.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"excluded module named '?([\w.]+)'? - imported by (.*)$", line)
        if not match or match.group(1) not in manifest.OPTIONAL_EXCLUDES:
            continue
        for importer, kinds in re.findall(r"([\w.]+) \(([^)]*)\)", match.group(2)):
            if "optional" not in kinds:
                bad.append(f"{match.group(1)} imported by {importer} ({kinds})")
    if bad:
        raise BuildError("modules installer/freeze_manifest.py leaves out (OPTIONAL_EXCLUDES) are imported outside "
                         "try/except ImportError: " + "; ".join(bad) + ". Keep them (remove them from EXCLUDES and "
                         "OPTIONAL_EXCLUDES) or check that the import is never reached.")


def folder_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def breakdown(app: Path) -> dict[str, int]:
    """Bytes per component: OpenVINO's plugins, frontends and core separately, then the largest packages."""
    internal = app / "_internal" if (app / "_internal").is_dir() else app
    sizes: dict[str, int] = {}
    seen: set[Path] = set()
    ov_libs = internal / "openvino" / "libs"
    if ov_libs.is_dir():
        for p in ov_libs.iterdir():
            if not p.is_file() or p.is_symlink():
                continue
            m = re.match(r"(?:lib)?openvino_(\w+?)_(plugin|frontend)", p.name)
            if m:
                key = f"openvino {m.group(2)} {m.group(1)}"
            elif re.match(r"(?:lib)?openvino(\.|_c\.)", p.name):
                key = "openvino core"
            elif p.name == "cache.json":
                key = "openvino GPU kernel-tuning cache"
            else:
                key = "openvino tbb/hwloc"
            sizes[key] = sizes.get(key, 0) + p.stat().st_size
            seen.add(p)
    for p in sorted(internal.iterdir()):
        if p.is_symlink():
            continue
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink() and f not in seen)
            key = p.name
        else:
            is_python = p.name.startswith(("libpython", "python", "base_library"))
            size, key = p.stat().st_size, ("python runtime" if is_python else "other shared libraries")
        if key == "openvino":
            key = "openvino python bindings"
        sizes[key] = sizes.get(key, 0) + size
    exe = app / (NAME + (".exe" if WINDOWS else ""))
    if exe.is_file():
        sizes["launcher"] = exe.stat().st_size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def check_folder(app: Path) -> None:
    """No torch (or other forbidden package) inside; the OpenVINO pieces the runtime loads by name are there."""
    bad = [str(p.relative_to(app)) for p in app.rglob("*")
           if (p.is_dir() and p.name in FORBIDDEN) or p.name.startswith(("libtorch", "torch_"))]
    if bad:
        raise BuildError(f"the frozen folder contains {', '.join(bad[:10])}: it was built from an environment with "
                         "torch/onnx/nncf, or an exclude is missing from installer/freeze_manifest.py")
    names = {p.name for p in app.rglob("*openvino*")}
    for needed in ("intel_cpu_plugin", "ir_frontend"):
        if not any(needed in n for n in names):
            raise BuildError(f"OpenVINO's {needed} is missing from the frozen folder; see installer/freeze_manifest.py")


# ------------------------------------------------------------------------------------------------ smoke tests


def exe_path(app: Path) -> Path:
    return app / (NAME + (".exe" if WINDOWS else ""))


def packaged_demo_mri(app: Path) -> Path:
    for candidate in (app / "_internal" / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz",
                      app / "edgeseg" / "demo" / "mri" / "example_mr_sm.nii.gz"):
        if candidate.is_file():
            return candidate
    raise BuildError(f"the demo MRI is not inside the frozen folder {app}")


def packaged_demo_bundle(app: Path) -> Path | None:
    for candidate in (app / "_internal" / "edgeseg" / "demo" / "bundle", app / "edgeseg" / "demo" / "bundle"):
        if (candidate / "bundle.json").is_file():
            return candidate
    return None


def frozen_env() -> dict[str, str]:
    """The environment the frozen app runs in: none of the build's Python variables, no test hooks."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "EDGESEG_", "VIRTUAL_ENV", "PYINSTALLER"))}
    env.pop("LD_LIBRARY_PATH", None)
    return env


class OutputLines:
    """Collects a process's merged output lines in a thread; :meth:`wait` blocks until one contains a text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait(self, needle: str, timeout: float) -> bool:
        """True once a line contains ``needle``; False when the output ended or ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    return False
                self._changed.wait(left)
        return True


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    if proc.poll() is None:
        if WINDOWS:
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def smoke(app: Path, bundle_arg: str, report: dict[str, Any]) -> None:
    """Run the frozen program as an administrator would; raise BuildError on the first failure."""
    exe = exe_path(app)
    env = frozen_env()
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-smoke-"))
    try:
        out = run([str(exe), "--version"], env=env, cwd=tmp).stdout.strip()
        if not out.startswith(f"{NAME} {version()}"):
            raise BuildError(f"--version printed {out!r}")
        log(f"smoke --version: {out}")

        proc = run([str(exe), "export", "--help"], env=env, cwd=tmp, check=False)
        if proc.returncode != 9 or "edgeseg[export]" not in proc.stdout + proc.stderr:
            raise BuildError(f"`edgeseg export` should say the export stage is not in this build and exit 9; "
                             f"got exit {proc.returncode}: {(proc.stdout + proc.stderr)[-500:]}")
        log("smoke export: not in this build, exit 9 (as designed)")

        incoming = tmp / "incoming"
        incoming.mkdir()
        config = tmp / "watch_config.yaml"
        config.write_text(f"roots: [{json.dumps(str(incoming))}]\nbundle: {json.dumps(bundle_arg)}\n"
                          f"state_dir: {json.dumps(str(tmp / 'state'))}\nlog_dir: {json.dumps(str(tmp / 'logs'))}\n"
                          "quiet_period_s: 1\nprecision: fp32\ntime_budget_s: null\n", encoding="utf-8")
        proc = run([str(exe), "doctor", "--config", str(config)], env=env, cwd=tmp, check=False)
        device_lines = [line for line in proc.stdout.splitlines() if "openvino devices" in line]
        if proc.returncode != 0 or not device_lines or "CPU" not in device_lines[0]:
            raise BuildError(f"doctor failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-1000:]}")
        log(f"smoke doctor: {device_lines[0].strip()}")

        mri = packaged_demo_mri(app)
        case = tmp / "segment"
        case.mkdir()
        shutil.copy2(mri, case / mri.name)
        t0 = time.perf_counter()
        proc = run([str(exe), "segment", str(case / mri.name), "--bundle", bundle_arg, "--precision", "fp32"],
                   env=env, cwd=tmp, check=False, timeout=900)
        seg = case / "example_mr_sm.edgeseg" / "seg.nii.gz"
        if proc.returncode != 0 or not seg.is_file() or not seg.with_name("preview.png").is_file():
            raise BuildError(f"segment failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        report["segment_demo_s"] = round(time.perf_counter() - t0, 2)
        log(f"smoke segment: {seg} in {report['segment_demo_s']} s")

        # `edgeseg run` (one-shot, what mercure, MONAI Deploy and vendor platforms call): input folder -> output folder
        oneshot_in, oneshot_out = tmp / "run-in", tmp / "run-out"
        oneshot_in.mkdir()
        shutil.copy2(mri, oneshot_in / mri.name)
        t0 = time.perf_counter()
        proc = run([str(exe), "run", "--input", str(oneshot_in), "--output", str(oneshot_out), "--bundle", bundle_arg,
                    "--precision", "fp32"], env=env, cwd=tmp, check=False, timeout=900)
        if proc.returncode != 0 or not list(oneshot_out.glob("*.edgeseg/seg.nii.gz")) or \
                not (oneshot_out / "result.json").is_file():
            raise BuildError(f"run (one-shot) failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        report["run_oneshot_s"] = round(time.perf_counter() - t0, 2)
        log(f"smoke run (one-shot): {oneshot_out} in {report['run_oneshot_s']} s")

        # watch --once on a series already there: segments it (and fills the model cache in state_dir)
        series = incoming / "patient1" / "series1"
        series.mkdir(parents=True)
        shutil.copy2(mri, series / mri.name)
        t0 = time.perf_counter()
        proc = run([str(exe), "watch", "--config", str(config), "--once"], env=env, cwd=tmp, check=False, timeout=900)
        results = list(series.glob("*.edgeseg/seg.nii.gz"))
        if proc.returncode != 0 or not results:
            raise BuildError(f"watch --once failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        report["watch_once_s"] = round(time.perf_counter() - t0, 2)
        log(f"smoke watch --once: {results[0]} in {report['watch_once_s']} s")

        # `edgeseg demo`: the packaged MRI arrives as a DICOM series, the watcher segments it (DICOM-SEG too)
        if bundle_arg == "demo":
            t0 = time.perf_counter()
            proc = run([str(exe), "demo", "--quiet-period", "1", "--timeout", "600"], env=env, cwd=tmp, check=False,
                       timeout=900)
            if proc.returncode != 0 or "DICOM-SEG" not in proc.stdout:
                raise BuildError(f"demo failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
            report["demo_s"] = round(time.perf_counter() - t0, 2)
            log(f"smoke demo: DICOM series in, masks and DICOM-SEG out in {report['demo_s']} s")
        else:
            log("smoke demo: skipped (no packaged demo bundle)")

        # start to "watcher started" with the model cache warm (best of 2 starts); in the second run a new series
        # is then dropped in: start to its result (quiet period 1 s included)
        times = []
        for attempt in range(2):
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if WINDOWS else {}  # type: ignore[attr-defined]
            live = subprocess.Popen([str(exe), "watch", "--config", str(config)], env=env, cwd=tmp, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
            out = OutputLines(live)
            ok = out.wait("watcher started", 300)
            times.append(time.perf_counter() - t0)
            if ok and attempt == 1:
                series2 = incoming / "patient2" / "series1"
                series2.mkdir(parents=True)
                shutil.copy2(mri, series2 / mri.name)
                if not out.wait("series done", 600):
                    stop(live)
                    raise BuildError("the frozen watcher did not segment a series dropped in:\n"
                                     + "\n".join(out.lines[-30:]))
                report["start_to_first_result_s"] = round(time.perf_counter() - t0, 2)
            code = stop(live)
            if not ok:
                raise BuildError("the frozen watcher did not report 'watcher started':\n" + "\n".join(out.lines[-30:]))
            if not WINDOWS and code not in (0, -signal.SIGTERM, 130, 143):
                raise BuildError(f"the frozen watcher exited {code} after SIGTERM:\n" + "\n".join(out.lines[-30:]))
        report["start_to_watching_s"] = round(min(times), 2)
        report["start_to_watching_all_s"] = [round(t, 2) for t in times]
        cache = tmp / "state" / "model_cache"
        report["model_cache_files"] = len(list(cache.rglob("*"))) if cache.is_dir() else 0
        log(f"smoke start-to-watching (warm cache, {report['model_cache_files']} cache files): "
            f"{report['start_to_watching_s']} s (runs: {report['start_to_watching_all_s']}); start to the result "
            f"of a series dropped in (quiet period 1 s): {report.get('start_to_first_result_s')} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ archive

INSTALL_TXT = """edgeseg {version} ({platform}) -- frozen runtime for the PC beside the MRI scanner

No Python, no internet and no GPU are needed on the target PC. The demo model inside is trained on ONE case:
it is a demo and test model, not a clinical model. edgeseg is not a medical device.

Contents
  edgeseg/            the program folder (run edgeseg/edgeseg{exe} --help)
  bundles/demo/       the default (demo) model bundle; put real bundles beside it
  watch_config.yaml   the watcher's configuration, every key commented
  install.sh, uninstall.sh, edgeseg.service    Linux service (systemd)
  install.ps1, uninstall.ps1                   Windows service (NSSM, see installer/README.md)

Linux (as root):
  ./install.sh                 # /opt/edgeseg, user edgeseg, /etc/edgeseg/watch_config.yaml, service edgeseg
  edit /etc/edgeseg/watch_config.yaml: roots: = the folder the scanner console exports to
  add that folder to ReadWritePaths= (systemctl edit edgeseg), then: systemctl restart edgeseg
  /opt/edgeseg/edgeseg doctor --config /etc/edgeseg/watch_config.yaml
  ./uninstall.sh [--purge]     # --purge also removes config, state and logs

Windows (PowerShell as Administrator):
  .\\install.ps1 [-Nssm C:\\path\\nssm.exe]      # C:\\Program Files\\edgeseg, C:\\ProgramData\\edgeseg
  .\\uninstall.ps1 [-Purge]

Try it by hand first:  edgeseg/edgeseg{exe} segment SERIES --bundle demo

One-shot (what mercure, MONAI Deploy and vendor AI platforms call; no service, no network):
  Linux:    edgeseg/edgeseg run --input IN_DIR --output OUT_DIR --bundle bundles/demo
  Windows:  edgeseg\\edgeseg.exe run --input IN_DIR --output OUT_DIR --bundle bundles\\demo
  (or MERCURE_IN_DIR/MERCURE_OUT_DIR, MONAI_INPUTPATH/MONAI_OUTPUTPATH, HOLOSCAN_INPUT_PATH/HOLOSCAN_OUTPUT_PATH)
"""


def make_archive(app: Path, dist: Path, bundle: Path | None) -> Path:
    stem = f"{NAME}-{version()}-{platform_tag()}"
    staging = dist / stem
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copytree(app, staging / NAME, symlinks=True)
    if bundle is not None:
        shutil.copytree(bundle, staging / "bundles" / "demo")
    shutil.copy2(REPO / "watch_config.yaml", staging / "watch_config.yaml")
    for rel in ("linux/install.sh", "linux/uninstall.sh", "linux/edgeseg.service", "windows/install.ps1",
                "windows/uninstall.ps1"):
        shutil.copy2(HERE / rel, staging / Path(rel).name)
    (staging / "INSTALL.txt").write_text(
        INSTALL_TXT.format(version=version(), platform=platform_tag(), exe=".exe" if WINDOWS else ""),
        encoding="utf-8", newline="\r\n" if WINDOWS else "\n")
    if WINDOWS:
        archive = dist / f"{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for p in sorted(staging.rglob("*")):
                zf.write(p, p.relative_to(dist))
    else:
        archive = dist / f"{stem}.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=6) as tf:
            tf.add(staging, arcname=stem)
    shutil.rmtree(staging)
    return archive


# --------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-freeze",
                        help="runtime-only venv to create or reuse (default: .venv-freeze in the repo, ignored)")
    parser.add_argument("--fresh", action="store_true", help="delete the venv first")
    parser.add_argument("--skip-venv", action="store_true",
                        help="freeze with the interpreter running this script (must be runtime-only)")
    parser.add_argument("--dist", type=Path, default=HERE / "dist", help="output folder (default installer/dist)")
    parser.add_argument("--work", type=Path, help="PyInstaller's work folder (default: <dist>/../build)")
    parser.add_argument("--smoke-bundle", type=Path,
                        help="bundle for the smoke tests (default: the packaged demo bundle)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke tests (not recommended)")
    parser.add_argument("--no-archive", action="store_true", help="do not write the archive")
    parser.add_argument("--report", type=Path, help="write sizes and timings as JSON here")
    parser.add_argument("--windows-wheels", action="store_true",
                        help="first check that the same dependency set exists as win_amd64 binary wheels "
                             "(installer/windows_wheels.py; needs the package index)")
    args = parser.parse_args(argv)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"version": version(), "platform": platform_tag(), "machine": platform.machine(),
                              "cpus": os.cpu_count(), "python": platform.python_version()}
    t_start = time.perf_counter()
    step = "environment"
    try:
        if args.windows_wheels:
            step = "windows wheels"
            from windows_wheels import WheelCheckError, check_windows_wheels

            t0 = time.perf_counter()
            try:
                wheels = check_windows_wheels()
            except WheelCheckError as err:
                raise BuildError(str(err)) from err
            report["windows_wheels"] = wheels["wheels"]
            log(f"windows wheels: {len(wheels['wheels'])} win_amd64 wheels resolved ({wheels['mb']} MB) in "
                f"{time.perf_counter() - t0:.1f} s")
            step = "environment"
        t0 = time.perf_counter()
        py = Path(sys.executable) if args.skip_venv else make_venv(args.venv.resolve(), args.fresh)
        info = check_env(py)
        report["python"] = info["python"]
        report["venv_s"] = round(time.perf_counter() - t0, 1)

        step = "pyinstaller"
        dist = args.dist.resolve()
        work = (args.work or dist.parent / "build").resolve()
        app = dist / NAME
        report["pyinstaller_s"] = round(freeze(py, dist, work), 1)

        step = "folder check"
        check_folder(app)
        check_optional_excludes(work)
        size = folder_size(app)
        report["folder"] = str(app)
        report["size_mb"] = round(size / 1e6, 1)
        report["breakdown_mb"] = {k: round(v / 1e6, 1) for k, v in breakdown(app).items()}
        log(f"frozen folder {app}: {size / 1e6:.1f} MB (goal < {SIZE_GOAL_MB} MB)"
            + ("" if size / 1e6 < SIZE_GOAL_MB else "  OVER THE GOAL"))
        for key, mb in report["breakdown_mb"].items():
            if mb >= 1:
                log(f"    {mb:7.1f} MB  {key}")

        bundle = packaged_demo_bundle(app)
        if not args.no_smoke:
            step = "smoke test"
            if args.smoke_bundle:
                bundle_arg = str(args.smoke_bundle.resolve())
            elif bundle is not None:
                bundle_arg = "demo"
            else:
                raise BuildError("no demo bundle inside the frozen folder and no --smoke-bundle given: cannot "
                                 "smoke-test segmenting")
            t0 = time.perf_counter()
            smoke(app, bundle_arg, report)
            report["smoke_s"] = round(time.perf_counter() - t0, 1)

        if not args.no_archive:
            step = "archive"
            t0 = time.perf_counter()
            archive = make_archive(app, dist, bundle)
            report["archive"] = str(archive)
            report["archive_mb"] = round(archive.stat().st_size / 1e6, 1)
            report["archive_s"] = round(time.perf_counter() - t0, 1)
            log(f"archive {archive} ({report['archive_mb']} MB, {report['archive_s']} s)")
    except (BuildError, subprocess.TimeoutExpired) as err:
        log(f"FAILED at {step}: {err}")
        report["failed"] = f"{step}: {err}"
        if args.report:
            args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
        return 1
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    log("timings: " + ", ".join(f"{k} {report[k]} s" for k in ("venv_s", "pyinstaller_s", "smoke_s", "archive_s",
                                                              "total_s") if k in report))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
