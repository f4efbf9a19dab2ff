"""The packaging lists every package of the source tree, and a real (non-editable) install carries the demo."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_in_pyproject():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_a_built_wheel_carries_every_module_and_the_demo(tmp_path):
    """What `pip install .` (not editable) gets: every runtime module, the demo bundle and the demo MRI."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("edgeseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    demo = REPO / "edgeseg" / "demo"
    expected = {f"edgeseg/demo/{p.relative_to(demo).as_posix()}" for p in demo.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)[:5]
    for module in ("edgeseg/runtime/infer/sliding_window.py", "edgeseg/runtime/watch/service.py",
                   "edgeseg/runtime/read/_dicom.py", "edgeseg/runtime/write/dicomseg.py", "edgeseg/bundle/schema.py",
                   "edgeseg/export/pipeline.py"):
        assert module in names, module
    # development helpers stay in the checkout: the test-model builders live in tests/helpers/testmodels/
    assert not [n for n in names if n.startswith(("edgeseg/export/testmodels/", "tests/", "tools/"))]
