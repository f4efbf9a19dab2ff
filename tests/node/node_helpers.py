"""Shared pieces of the DICOM node tests: small real MR series, a listener on a free port, certificates (a module
of its own name: several test folders have a conftest)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from edgeseg.demo.dicom_series import write_dicom_series
from edgeseg.runtime.node.receive import ReceiverEvent, StorageReceiver
from edgeseg.runtime.node.settings import ListenerSettings

CONSOLE = "MR_CONSOLE"
LISTENER_AE = "EDGESEG"


def mr_series(folder: Path, n: int = 6, *, shape: tuple[int, int] = (32, 24), seed: int = 0,
              description: str = "t1 test", study_uid: str | None = None) -> list[Path]:
    """A classic MR series of ``n`` slices (edgeseg's own DICOM writer: valid UIDs, real geometry)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 1000, size=(*shape, n)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    return write_dicom_series((array, affine), folder, description, study_uid=study_uid, file_names="ordered")


def stored_path(root: Path, ds_path: Path) -> Path:
    """Where the listener puts the instance of ``ds_path``: root/Study/Series/SOP.dcm."""
    from pydicom import dcmread

    ds = dcmread(ds_path, stop_before_pixels=True)
    return root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def same_instance(a: Path, b: Path) -> bool:
    """Same SOP Instance UID and the same pixels (the file as stored may carry another file meta)."""
    from pydicom import dcmread

    da, db = dcmread(a), dcmread(b)
    return da.SOPInstanceUID == db.SOPInstanceUID and np.array_equal(da.pixel_array, db.pixel_array)


class Listener:
    """A running StorageReceiver on a free loopback port, with the events it emitted."""

    def __init__(self, root: Path, **settings: object) -> None:
        values: dict[str, object] = dict(enabled=True, ae_title=LISTENER_AE, port=0, bind_address="127.0.0.1",
                                         allowed_ae_titles=(CONSOLE,), root=root, min_free_mb=0.0)
        values.update(settings)
        self.events: list[ReceiverEvent] = []
        self.receiver = StorageReceiver(ListenerSettings(**values), self.events.append)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        return self.receiver.address[1]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate signed by it (PEM), made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=edgeseg test CA")
    out: dict[str, Path] = {"ca": ca}
    for name in ("server", "client"):
        key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj",
            "/CN=127.0.0.1")
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "2")
        out[f"{name}_key"], out[f"{name}_cert"] = key, cert
    return out
