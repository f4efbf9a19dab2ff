"""The module image's promises, checked statically (these machines cannot build images): runtime-only install (no
torch, no extras), a non-root user, ``edgeseg run`` as the entry point, CPU only, no network needed, the bundle
baked in from a folder that exists (or mounted through EDGESEG_BUNDLE), and a build context that holds what the
package needs."""
from __future__ import annotations

import fnmatch
import json
import re
import shlex

from installer_helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _all(kind: str) -> list[str]:
    return [rest for word, rest in instructions() if word == kind]


def test_base_image_is_python_slim() -> None:
    (base,) = _all("FROM")
    assert re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", base), base


def test_runtime_only_install_without_torch() -> None:
    runs = " ".join(_all("RUN"))
    assert "pip install" in runs
    assert not re.search(r"torch|onnx|nncf|nnunet|\[(export|test|installer)\]|\.\[", runs.replace(
        "('torch', 'onnx', 'nncf')", "")), runs
    assert "find_spec" in runs  # the build fails if torch, onnx or nncf became importable anyway
    assert "--device" not in DOCKERFILE.read_text() and "nvidia" not in DOCKERFILE.read_text().lower()


def test_runs_as_a_non_root_user_after_the_last_install() -> None:
    steps = instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "no USER: the image would run as root"
    user = steps[users[-1]][1]
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    last_run = max(i for i, (word, _) in enumerate(steps) if word == "RUN")
    assert users[-1] > last_run


def test_entrypoint_is_edgeseg_run() -> None:
    (entry,) = _all("ENTRYPOINT")
    assert json.loads(entry) == ["edgeseg", "run"]
    assert not _all("CMD") and not _all("EXPOSE")  # no network service, no arguments mercure would not pass


def test_environment_bundle_and_no_network_needs() -> None:
    env = " ".join(_all("ENV"))
    assert "EDGESEG_BUNDLE=/opt/holoscan/models/edgeseg" in env and "HOME=/tmp" in env
    (arg,) = [a for a in _all("ARG") if a.startswith("BUNDLE=")]
    default = arg.split("=", 1)[1]
    assert (REPO / default / "bundle.json").is_file(), f"the default BUNDLE {default} is not a bundle in the repo"
    assert any(c.split()[-1] == "/opt/holoscan/models/edgeseg" and "${BUNDLE}" in c for c in _all("COPY"))


def test_laid_out_as_a_monai_application_package() -> None:
    """The MAP specification's paths: manifests in /etc/holoscan/, the application in /opt/holoscan/app/ (the
    entry point's edgeseg comes from there), documents in /opt/holoscan/docs/, the HOLOSCAN_* variables as app.json
    lists them, the OCI title and version labels, /var/holoscan as the working folder."""
    from edgeseg import __version__

    copies = {shlex.split(c)[-1]: shlex.split(c)[:-1] for c in _all("COPY")}
    assert sorted(copies["/etc/holoscan/"]) == ["installer/map/app.json", "installer/map/pkg.json"]
    assert "README.md" in copies["/opt/holoscan/docs/"] and "LICENSE" in copies["/opt/holoscan/docs/"]
    runs = " ".join(_all("RUN"))
    assert "python -m venv /opt/holoscan/app" in runs and "/opt/holoscan/app/bin/pip install" in runs
    env = " ".join(_all("ENV"))
    assert "PATH=/opt/holoscan/app/bin:" in env
    app = json.loads((REPO / "installer" / "map" / "app.json").read_text())
    for name, value in app["environment"].items():
        assert f"{name}={value}" in env, name
    labels = " ".join(_all("LABEL"))
    assert 'org.opencontainers.image.title="edgeseg"' in labels
    assert f'org.opencontainers.image.version="{__version__}"' in labels
    assert _all("WORKDIR") == ["/var/holoscan"]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (last match wins, '!' re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat == "**" or fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*") or \
                fnmatch.fnmatch(rel, pat.replace("**/", "*/")) or \
                fnmatch.fnmatch(rel.split("/")[-1], pat.replace("**/", "")):
            ignored = not negate
    return ignored


def test_the_build_context_holds_every_copied_source() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for copy in _all("COPY"):
        parts = shlex.split(copy)
        for src in parts[:-1]:
            if src.startswith("--") or "$" in src:
                continue
            assert (REPO / src).exists(), src
            assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"
    assert not _ignored("edgeseg/demo/bundle/bundle.json", patterns)
    assert _ignored("tests/conftest.py", patterns) and _ignored(".venv", patterns)


def test_every_package_dir_of_pyproject_is_copied() -> None:
    line = re.search(r"^package-dir\s*=\s*\{(.*)\}", (REPO / "pyproject.toml").read_text(), re.M)
    assert line is not None
    dirs = set(re.findall(r'"[\w.]+"\s*=\s*"([\w/]+)"', line.group(1)))
    assert dirs >= {"edgeseg", "bundle", "runtime", "export"}
    copied = {shlex.split(c)[0] for c in _all("COPY")}
    assert dirs <= copied, dirs - copied
