"""The module image as a MONAI Application Package: ``edgeseg run`` under a MAP host's variables writes the DICOM
results at the output folder's top level (layout ``map``), the manifests in ``installer/map/`` follow the MAP
specification's fields (the Dockerfile copies them to /etc/holoscan/, ``tests/installer/test_dockerfile.py``), and
the manifest export method copies what the host asks for."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from edgeseg import __version__
from edgeseg.cli import main
from edgeseg.runtime.oneshot import map as map_package

REPO = Path(__file__).resolve().parents[2]
MAP_DIR = REPO / "installer" / "map"


def test_a_map_host_gets_the_dicom_results_at_the_top_level(tmp_path: Path, demo_series: list[Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    inp, out = tmp_path / "input", tmp_path / "output"
    shutil.copytree(demo_series[0].parent, inp)
    monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(inp))
    monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(out))
    monkeypatch.setenv("EDGESEG_BUNDLE", "demo")  # as the image names its bundle (/opt/holoscan/models/edgeseg)
    assert main(["-q", "run", "--precision", "fp32", "--no-preview"]) == 0
    top = sorted(p.name for p in out.iterdir())
    dcm = [name for name in top if name.endswith(".dcm")]
    modalities = {pydicom.dcmread(out / name, stop_before_pixels=True).Modality for name in dcm}
    assert "SEG" in modalities and all(name.endswith(("_dicom_seg.dcm", "_dicom_sr.dcm")) for name in dcm)
    [folder] = [p for p in out.iterdir() if p.is_dir()]
    assert folder.name.endswith(".edgeseg") and not list(folder.glob("*.dcm"))  # moved, not copied
    result = json.loads((out / "result.json").read_text())
    assert result["edgeseg"]["layout"] == "map" and result["edgeseg"]["engine"] == "Holoscan"
    [series] = result["series"]
    assert series["outputs"]["dicom_seg"] in dcm and (out / series["outputs"]["labelmap"]).is_file()


def test_the_manifests_follow_the_map_specification() -> None:
    app = json.loads((MAP_DIR / "app.json").read_text(encoding="utf-8"))
    pkg = json.loads((MAP_DIR / "pkg.json").read_text(encoding="utf-8"))
    # the application manifest's required fields, and the variables the specification lists
    assert {"command", "input", "output"} <= set(app) and app["type"] == "application"
    assert json.loads(app["command"]) == ["/opt/holoscan/app/bin/edgeseg", "run"]
    assert app["input"]["formats"] and app["output"]["format"]
    assert app["version"] == pkg["version"] == __version__ and app["workingDirectory"] == "/var/holoscan/"
    env = app["environment"]
    for name in ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_WORKDIR", "HOLOSCAN_MODEL_PATH",
                 "HOLOSCAN_CONFIG_PATH", "HOLOSCAN_APP_MANIFEST_PATH", "HOLOSCAN_PKG_MANIFEST_PATH",
                 "HOLOSCAN_LOGS_PATH"):
        assert env[name].startswith("/"), name
    assert env["HOLOSCAN_APP_MANIFEST_PATH"] == str(map_package.APP_MANIFEST)
    assert env["EDGESEG_BUNDLE"] == f"{pkg['modelRoot']}{pkg['models'][0]['path']}"
    # the package manifest: application and model roots, the model, the resources (CPU only)
    assert pkg["applicationRoot"] == "/opt/holoscan/app/" and pkg["modelRoot"] == "/opt/holoscan/models/"
    res = pkg["resources"]
    assert res["gpu"] == 0 and isinstance(res["cpu"], int) and res["cpu"] >= 1
    assert res["memory"].endswith(("Mi", "Gi")) and res["sharedMemory"].endswith(("Mi", "Gi"))


def test_manifest_export_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The host mounts the export folder (here: one sub-folder, config): only the manifests are copied there."""
    monkeypatch.setenv("HOLOSCAN_APP_MANIFEST_PATH", str(MAP_DIR / "app.json"))
    monkeypatch.setenv("HOLOSCAN_PKG_MANIFEST_PATH", str(MAP_DIR / "pkg.json"))
    root = tmp_path / "export"
    (root / "config").mkdir(parents=True)
    assert map_package.export_requested(root)
    assert map_package.export(root) == [root / "config"]
    assert sorted(p.name for p in (root / "config").iterdir()) == ["app.json", "pkg.json"]
    assert sorted(p.name for p in root.iterdir()) == ["config"]
    assert main(["-q", "run", "--show-manifests"]) == 0
    out = capsys.readouterr().out
    assert '"applicationRoot": "/opt/holoscan/app/"' in out and '"command"' in out
    monkeypatch.setenv("HOLOSCAN_APP_MANIFEST_PATH", str(tmp_path / "none.json"))
    assert not map_package.export_requested(root)
