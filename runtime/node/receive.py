"""The Storage SCP: images from consoles, written into a watched root before the peer hears "success".

Each received instance becomes ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``:

* pynetdicom streams the dataset to a temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``: memory stays
  bounded whatever the image or the number of associations); the handler reads only its header, checks the three
  UIDs (:func:`~edgeseg.runtime.node.settings.is_valid_uid`: digits and dots, so no value a peer sends can make a
  path leave the root), copies it to a hidden temporary beside its final name, fsyncs it, renames it into place and
  fsyncs the folder. Only then is 0x0000 returned: an instance the console was told was stored survives kill -9 and
  power loss. A second copy of the same SOP Instance UID replaces the first atomically.
* Disk full, an unwritable root, or less than ``min_free_mb`` free: 0xA700 "out of resources" (the console keeps the
  images and retries); the temporary is removed, nothing partial is left under a final name.
* Associations are accepted only from the configured peers (calling AE title and/or host, the called AE title must be
  ours); a refused peer gets A-ASSOCIATE-RJ before it can send anything, and the refusal and its reason are logged.
* What was stored, and when an association ended, goes to ``on_event`` (the watcher's completion tracker uses it to
  treat a series sent in one association as complete without waiting the full quiet period).

The receiver only writes into the folder; the watcher finds the files there as it finds any others.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from edgeseg.errors import DicomNodeError
from edgeseg.runtime.node.settings import ListenerSettings, is_valid_uid
from edgeseg.runtime.write.atomic import write_file_atomic

log = logging.getLogger(__name__)

#: C-STORE statuses (PS3.4 Table B.2-1)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: the hidden temporary of an instance being written: ``.<SOP>.dcm.recv-<random>`` beside its final name
#: (:func:`~edgeseg.runtime.write.atomic.write_file_atomic`)
RECEIVING_SUFFIX = ".recv-"


@dataclass(frozen=True)
class Stored:
    """An instance is on disk under its final name (fsync'ed)."""

    path: Path
    association: int
    peer: str


@dataclass(frozen=True)
class AssociationEnded:
    """An association that stored instances ended (released, aborted or the connection dropped)."""

    association: int
    folders: tuple[Path, ...]
    stored: int
    peer: str


ReceiverEvent = Union[Stored, AssociationEnded]


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_dirs(root: Path, parts: tuple[str, ...]) -> Path:
    """Create ``root/parts...`` one level at a time, fsyncing each parent that got a new entry; refuses a level that
    is a symbolic link (never written through)."""
    here = root
    for part in parts:
        nxt = here / part
        if nxt.is_symlink():
            raise PermissionError(f"{nxt} is a symbolic link; edgeseg does not write through links")
        if not nxt.is_dir():
            try:
                nxt.mkdir()
            except FileExistsError:
                pass
            fsync_dir(here)
        here = nxt
    return here


def remove_stale_temporaries(root: Path) -> int:
    """Remove the hidden temporaries (``<Study>/<Series>/.<SOP>.dcm.recv-*``) a killed listener left in ``root``:
    instances whose store was never acknowledged (the console sends them again). One listener per root: call it
    before listening. Returns how many were removed."""
    removed = 0
    for tmp in root.glob(f"*/*/.*.dcm{RECEIVING_SUFFIX}*"):
        try:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d unacknowledged partial instance(s) left by an interrupted listener in %s", removed,
                 root)
    return removed


def store_file(source: Path, root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Copy the received file ``source`` to ``root/study/series/sop.dcm`` atomically and durably; returns the final
    path. The UIDs must be valid (checked by the caller). Raises OSError (the temporary is removed)."""
    folder = _make_dirs(root, (study_uid, series_uid))
    final = folder / f"{sop_uid}.dcm"
    with open(source, "rb") as fin:
        write_file_atomic(final, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), tmp_infix=RECEIVING_SUFFIX)
    fsync_dir(folder)
    return final


class StorageReceiver:
    """The listener of ``settings``: :meth:`start` binds and serves in background threads, :meth:`stop` ends it.

    ``on_event``: called (from pynetdicom's association threads) with :class:`Stored` and
    :class:`AssociationEnded`; it must be quick and must not raise (the watcher only puts them on a queue).
    """

    def __init__(self, settings: ListenerSettings, on_event: Callable[[ReceiverEvent], None] | None = None) -> None:
        if settings.root is None:
            raise DicomNodeError("The DICOM listener has no root to write into. Fix: set dicom_listener.root or "
                                 "roots in watch_config.yaml.")
        self.settings = settings
        self.root = Path(settings.root)
        self.on_event = on_event
        self.stats: Counter[str] = Counter()
        self._server: Any = None
        self._lock = threading.Lock()
        self._assocs: dict[int, tuple[set[Path], int, str]] = {}

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is the OS's choice when the setting is 0)."""
        if self._server is None:
            return self.settings.bind_address, self.settings.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        from pynetdicom import AE, _config, evt
        from pynetdicom.sop_class import Verification

        s = self.settings
        _config.STORE_RECV_CHUNKED_DATASET = True  # stream each dataset to disk; never hold it in memory
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.require_called_aet = True
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs from the console
        ae.add_supported_context(Verification)
        for sop in s.sop_classes:
            ae.add_supported_context(sop, list(s.transfer_syntaxes))
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        ssl_context = None
        if s.tls is not None:
            try:
                ssl_context = s.tls.server_context()
            except (OSError, ValueError) as err:
                raise DicomNodeError(f"The DICOM listener's TLS certificate or key does not load ({err}). Fix: "
                                     "dicom_listener.tls_certificate/tls_key must be PEM files that match.") from err
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.root)
            self._server = ae.start_server((s.bind_address, s.port), block=False, evt_handlers=handlers,
                                           ssl_context=ssl_context)
        except OSError as err:
            raise DicomNodeError(
                f"The DICOM listener cannot listen on {s.bind_address}:{s.port} ({err.strerror or err}). Fix: another "
                "program uses the port (DCMTK storescp, Orthanc, a second watcher: `edgeseg doctor` shows it), or a "
                "port below 1024 needs administrator rights; choose dicom_listener.port (and the same port on the "
                "console).") from err
        host, port = self.address
        log.info("DICOM listener started: ae_title=%s address=%s:%d tls=%s allowed_ae_titles=%s allowed_hosts=%s "
                 "root=%s", s.ae_title, host, port, s.tls is not None, ",".join(s.allowed_ae_titles) or "(any)",
                 ",".join(s.allowed_hosts) or "(any)", self.root)

    def stop(self) -> None:
        """Stop listening and end the open associations (a peer in the middle of a store gets no success for it)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            log.info("DICOM listener stopped: stored=%d refused_associations=%d failed_stores=%d",
                     self.stats["stored"], self.stats["refused"], self.stats["failed"])

    def __enter__(self) -> StorageReceiver:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ handlers

    @staticmethod
    def _peer(assoc: Any) -> tuple[str, str]:
        """(calling AE title, peer address); from the A-ASSOCIATE-RQ, which is all there is at EVT_REQUESTED."""
        req = assoc.requestor
        primitive = getattr(req, "primitive", None)
        calling = getattr(primitive, "calling_ae_title", None) or req.ae_title
        return str(calling).strip(), str(req.address)

    def _on_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ: refuse peers that are not configured, before they can send anything."""
        assoc = event.assoc
        calling, address = self._peer(assoc)
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        reason = None
        diagnostic = 0x01
        if called != self.settings.ae_title:
            reason, diagnostic = f"called AE title {called!r} is not ours ({self.settings.ae_title!r})", 0x07
        else:
            reason = self.settings.allows(calling, address)
            if reason is not None and "AE title" in reason:
                diagnostic = 0x03
        if reason is not None:
            self.stats["refused"] += 1
            log.warning("DICOM association refused: calling_ae=%s host=%s reason=%s", calling, address, reason)
            assoc.acse.send_reject(0x01, 0x01, diagnostic)
            assoc.kill()  # as pynetdicom's own rejections: the DUL sends the A-ASSOCIATE-RJ before the socket closes

    def _on_store(self, event: Any) -> Any:
        from pydicom import dcmread
        from pydicom.dataset import Dataset

        calling, address = self._peer(event.assoc)
        peer = f"{calling}@{address}"
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")

        def failure(status: int, comment: str) -> Dataset:
            self.stats["failed"] += 1
            log.error("DICOM store refused: peer=%s sop_instance_uid=%s status=0x%04X reason=%s", peer,
                      sop_uid[:80], status, comment)
            rsp = Dataset()
            rsp.Status = status
            rsp.ErrorComment = comment[:64]
            return rsp

        try:
            source = Path(event.dataset_path)
            header = dcmread(source, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        except Exception as err:  # noqa: BLE001 - anything unreadable is the peer's data, not our crash
            return failure(CANNOT_UNDERSTAND, f"dataset not readable: {type(err).__name__}")
        study, series = str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", ""))
        sop_in_data = str(header.get("SOPInstanceUID", ""))
        for name, value in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study),
                            ("SeriesInstanceUID", series)):
            if not is_valid_uid(value):
                return failure(CANNOT_UNDERSTAND, f"{name} missing or not a valid UID")
        if sop_in_data and sop_in_data != sop_uid:
            return failure(CANNOT_UNDERSTAND, "SOPInstanceUID differs from the request's")
        try:
            free_mb = shutil.disk_usage(self.root).free / 1e6
        except OSError as err:
            return failure(OUT_OF_RESOURCES, f"root not available: {err.strerror or err}")
        if free_mb < self.settings.min_free_mb:
            return failure(OUT_OF_RESOURCES, f"less than {self.settings.min_free_mb:g} MB free")
        try:
            path = store_file(source, self.root, study, series, sop_uid)
        except OSError as err:
            return failure(OUT_OF_RESOURCES, f"not written: {err.strerror or type(err).__name__}")
        self.stats["stored"] += 1
        key = id(event.assoc)
        with self._lock:
            folders, count, _ = self._assocs.get(key, (set(), 0, peer))
            folders.add(path.parent)
            self._assocs[key] = (folders, count + 1, peer)
        log.debug("DICOM instance stored: peer=%s file=%s", peer, path)
        self._emit(Stored(path, key, peer))
        return SUCCESS

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            state = self._assocs.pop(id(event.assoc), None)
        if state is None:
            return
        folders, count, peer = state
        log.info("DICOM association ended: peer=%s stored=%d series=%d", peer, count, len(folders))
        self._emit(AssociationEnded(id(event.assoc), tuple(sorted(folders)), count, peer))

    def _emit(self, event: ReceiverEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a hint lost is only a slower completion (the watcher sees the files)
            log.exception("DICOM listener: event not delivered to the watcher")
