"""The Storage SCP: images from consoles, written into a watched root before the peer hears "success".

Each received instance becomes ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``:

* pynetdicom streams the dataset to a temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``: memory stays
  bounded whatever the image or the number of associations), in ``<root>/.edgeseg-incoming`` (inside the root, on its
  disk: ``min_free_mb`` covers it; never the system temporary folder); the handler reads only its header, checks the
  three UIDs (:func:`~edgeseg.runtime.node.settings.is_valid_uid`: digits and dots, so no value a peer sends can make
  a path leave the root), links it (same file system: no copy of its bytes; else copies it) to a hidden temporary
  beside its final name, fsyncs it, renames it into place and fsyncs the folder. Only then is 0x0000 returned: an
  instance the console was told was stored survives kill -9 and power loss. A second copy of the same SOP Instance
  UID replaces the first atomically, unless it names another patient (PatientID, PatientName, PatientBirthDate
  differ): then the first stays, the second is kept aside under ``<root>/.edgeseg-conflicts/`` and a WARNING names
  both (a console that reuses UIDs, or a mix-up to look at).
* Disk full, an unwritable root, or less than ``min_free_mb`` free: 0xA700 "out of resources" (the console keeps the
  images and retries); the temporary is removed, nothing partial is left under a final name.
* Associations are accepted only from the configured peers (calling AE title and/or host, the called AE title must be
  ours); a refused peer gets A-ASSOCIATE-RJ before it can send anything, and the refusal and its reason are logged
  (the first of each reason per peer address in full, the rest in one summary line per peer and minute).
  Before that, :mod:`edgeseg.runtime.node.guard` closes a connection from a host not in ``allowed_hosts`` or beyond
  ``max_associations_per_host`` at accept, before reading a byte; negotiates TLS off the accept thread with a
  deadline; bounds each PDU's length and arrival time; and ends everything at :meth:`StorageReceiver.stop` within
  about a second whatever peers do.
* What was stored, and when an association ended, goes to ``on_event`` (the watcher's completion tracker uses it to
  treat a series sent in one association as complete without waiting the full quiet period).

The receiver only writes into the folder; the watcher finds the files there as it finds any others.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from edgeseg.errors import DicomNodeError
from edgeseg.runtime.node.settings import ListenerSettings, is_valid_uid
from edgeseg.runtime.write.atomic import write_file_atomic, write_path_atomic

log = logging.getLogger(__name__)

#: C-STORE statuses (PS3.4 Table B.2-1)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: where an instance that names another patient than the stored copy of its SOP Instance UID is kept aside
CONFLICTS_DIR = ".edgeseg-conflicts"
#: the attributes that say which patient an instance is of
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate")
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
    is a symbolic link (never written through). One ``lstat`` per existing level."""
    here = root
    for part in parts:
        nxt = here / part
        try:
            mode: int | None = os.lstat(nxt).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            raise PermissionError(f"{nxt} is a symbolic link; edgeseg does not write through links")
        if mode is None or not stat.S_ISDIR(mode):
            try:
                nxt.mkdir()
            except FileExistsError:
                pass
            fsync_dir(here)
        here = nxt
    return here


def new_file_mode(folder: Path) -> int | None:
    """The permission bits a file created in ``folder`` gets (``0o666`` less the umask), read by creating one; None
    where that cannot be done. A listener reads them when it starts and gives them to every received file it links
    into place (:func:`store_file`: pynetdicom creates its file 0600)."""
    probe = folder / f".edgeseg-mode-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError:
        return None
    return mode


#: errors of a link that a copy would meet as well (the disk, not the way of writing): reported, not copied around
_REAL_FAILURES = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EIO", "EROFS")
                           if hasattr(errno, name))


def _link_into_place(source: Path, final: Path, mode: int | None) -> bool:
    """Put the received file ``source`` (already in the root's file system, streamed there by pynetdicom) under
    ``final`` without copying its bytes: the one atomic writer (:func:`write_path_atomic`) with a hard link as the
    hidden temporary (``.<SOP>.dcm.recv-*`` beside ``final``), fsync'ed, then renamed over ``final``. False when
    ``source`` cannot be linked there (another file system, or one without hard links): the caller copies. Raises
    OSError for any other failure (the temporary is removed). ``mode``: the permission bits it is given."""
    linked = False

    def link(tmp: Path) -> None:
        nonlocal linked
        os.link(source, tmp)
        linked = True
        if mode is not None:
            os.chmod(tmp, mode)

    try:
        write_path_atomic(final, link, tmp_infix=RECEIVING_SUFFIX)
    except OSError as err:
        if linked or err.errno in _REAL_FAILURES:
            raise
        return False
    return True


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


def store_file(source: Path, root: Path, study_uid: str, series_uid: str, sop_uid: str,
               mode: int | None = None) -> Path:
    """Put the received file ``source`` at ``root/study/series/sop.dcm`` atomically and durably (linked when it is
    on the same file system, else copied; fsync'ed under a hidden name, renamed, the folder fsync'ed); returns the
    final path. The UIDs must be valid (checked by the caller). ``mode``: the permission bits a linked file is
    given (:func:`new_file_mode`; a copy is created with them). Raises OSError (the temporary is removed)."""
    folder = _make_dirs(root, (study_uid, series_uid))
    final = folder / f"{sop_uid}.dcm"
    if not _link_into_place(source, final, mode):
        with open(source, "rb") as fin:
            write_file_atomic(final, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), tmp_infix=RECEIVING_SUFFIX)
    fsync_dir(folder)
    return final


def _open(assoc: Any) -> bool:
    """True while the association's connection is open (its thread may outlive it by up to acse_timeout)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    try:
        return sock is not None and sock.fileno() != -1
    except (OSError, ValueError):
        return False


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
        self._incoming = self.root / ".edgeseg-incoming"
        self._file_mode: int | None = None  # of a new file in the root, read at start (new_file_mode)
        self._refusals: Any = None  # the listener's guard.RefusalLog, set by start

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is the OS's choice when the setting is 0)."""
        if self._server is None:
            return self.settings.bind_address, self.settings.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        import threading as _threading

        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        from edgeseg.runtime.node.guard import ARTIM_S, INCOMING_DIR, MAX_PDU, GuardedServer, stream_datasets_into
        from edgeseg.runtime.node.send import tame_pynetdicom_logs
        from edgeseg.runtime.node.settings import host_matches

        s = self.settings
        tame_pynetdicom_logs()
        ae = AE(ae_title=s.ae_title)
        # pynetdicom counts acceptor threads, which outlive a closed connection by up to acse_timeout: its limit is
        # only a backstop; _on_requested applies max_associations to connections that are open
        ae.maximum_associations = 4 * s.max_associations + 8
        ae.require_called_aet = True
        ae.network_timeout = 60
        ae.acse_timeout = ARTIM_S  # also the ARTIM timer: a peer that connects and says nothing is dropped
        ae.dimse_timeout = 60
        ae.maximum_pdu_size = MAX_PDU  # what we announce and (guard) enforce: memory per association bounded
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
            self._incoming = self.root / INCOMING_DIR
            stream_datasets_into(self._incoming)
            self._file_mode = new_file_mode(self._incoming)
            server: Any = ae.make_server((s.bind_address, s.port), evt_handlers=handlers, ssl_context=ssl_context,
                                         server_class=GuardedServer)
            allowed = s.allowed_hosts
            server.allows_host = (lambda host: None if not allowed or host_matches(host, allowed)
                                  else f"host {host} is not in dicom_listener.allowed_hosts")
            server.per_host = s.max_associations_per_host
            server.incoming_dir = self._incoming
            self._refusals = server.refusals
            _threading.Thread(target=server.serve_forever, name="edgeseg-dicom-accept", daemon=True).start()
            ae._servers.append(server)  # as AE.start_server does: the AE knows its server
            self._server = server
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
            from edgeseg.runtime.node.guard import forget_incoming

            server.close_all(timeout=2.0)  # associations and handshakes end now, whatever the peers do
            forget_incoming(self._incoming)
            log.info("DICOM listener stopped: stored=%d refused_associations=%d refused_connections=%d "
                     "failed_stores=%d kept_aside=%d", self.stats["stored"], self.stats["refused"],
                     server.stats["refused"], self.stats["failed"], self.stats["kept_aside"])

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
        result, source = 0x01, 0x01
        if called != self.settings.ae_title:
            reason, diagnostic = f"called AE title {called!r} is not ours ({self.settings.ae_title!r})", 0x07
        else:
            reason = self.settings.allows(calling, address)
            if reason is not None and "AE title" in reason:
                diagnostic = 0x03
        kind = reason
        if reason is None:
            others = [a for a in assoc.ae.active_associations if a.is_acceptor and a is not assoc and _open(a)]
            if len(others) >= self.settings.max_associations:
                reason = (f"local limit exceeded: {len(others)} associations open "
                          f"(dicom_listener.max_associations {self.settings.max_associations})")
                kind = "local limit exceeded"
                result, source, diagnostic = 0x02, 0x03, 0x02
        if reason is not None:
            self.stats["refused"] += 1
            # the first of each reason per peer address in full, the rest summarized (guard.RefusalLog)
            self._refusals.refused("association", address, getattr(assoc.requestor, "port", "?"), reason,
                                   str(kind), calling, called)
            assoc.acse.send_reject(result, source, diagnostic)
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
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", *PATIENT_KEYS])
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
        conflict = self._other_patient(header, study, series, sop_uid)
        try:
            if conflict is not None:
                (self.root / CONFLICTS_DIR).mkdir(exist_ok=True)
                path = store_file(source, self.root / CONFLICTS_DIR, study, series,
                                  f"{sop_uid}.{time.time_ns()}", self._file_mode)
                self.stats["kept_aside"] += 1
                log.warning("DICOM instance kept aside: peer=%s sop_instance_uid=%s names another patient than the "
                            "stored instance of that UID (%s); the stored one stays at %s, this one is at %s. Check "
                            "the console (UIDs reused?) and remove the one that is wrong.", peer, sop_uid, conflict,
                            self.root / study / series / f"{sop_uid}.dcm", path)
                return SUCCESS
            path = store_file(source, self.root, study, series, sop_uid, self._file_mode)
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

    def _other_patient(self, new: Any, study: str, series: str, sop_uid: str) -> str | None:
        """None, unless ``root/study/series/sop.dcm`` exists and names another patient than the received header
        ``new``: then what differs (attribute names only, no values: logs are not the place for patient data)."""
        from pydicom import dcmread

        stored = self.root / study / series / f"{sop_uid}.dcm"
        if not stored.is_file():
            return None
        try:
            old = dcmread(stored, stop_before_pixels=True, specific_tags=list(PATIENT_KEYS))
        except Exception:  # noqa: BLE001 - an unreadable stored copy is replaced as before
            return None
        differ = [k for k in PATIENT_KEYS if str(old.get(k, "") or "").strip() != str(new.get(k, "") or "").strip()]
        return ", ".join(differ) + " differ" if differ else None

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
