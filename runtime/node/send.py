"""The Storage SCU and C-ECHO: results to a destination, and is a destination there at all.

:func:`send_files` sends files over one association and says, per file, whether the destination has it, and if not
whether trying again can help (:attr:`StoreOutcome.permanent`): an association rejected *permanently* (our AE title
unknown to the PACS), a SOP class the destination does not take, or a failure status of the "cannot understand"
family will fail again; a connection refused or dropped, a time-out, a *transient* rejection and "out of resources"
may not. Retrying, back-off and bookkeeping are the watcher's (:mod:`edgeseg.runtime.watch.deliver`).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeseg.runtime.node.settings import Destination

log = logging.getLogger(__name__)

#: seconds a destination may take to answer one C-STORE (and stay silent meanwhile) before the send counts as lost:
#: at least this, or ``10 * timeout_s``. A PACS slower than ``timeout_s`` (a busy archive writing to slow disks)
#: still answers within it; a send given up too early is sent again later and the PACS files copies of it.
STORE_RESPONSE_MIN_S = 300.0

#: what pynetdicom logs at ERROR for routine outcomes that the sender and the listener report themselves, in one
#: line with the destination or peer (a PACS outage is WARNING per retry, not six ERROR lines that trip alerting)
_ROUTINE_PYNETDICOM = (
    "Association request failed: unable to connect to remote", "TCP Initialisation Error",
    "No accepted presentation contexts", "Association Rejected", "Result: ", "Reason: ", "Association Aborted",
    "Aborting Association", "DIMSE timeout reached", "Connection closed while waiting for DIMSE message",
    "Network timeout reached", "Connection closed before the entire PDU was received", "ACSE timeout reached",
    "No presentation context for", "The received PDU is shorter than expected",
)
_PYNETDICOM_LOGGERS = ("pynetdicom.transport", "pynetdicom.acse", "pynetdicom.association", "pynetdicom.dul",
                       "pynetdicom.ae", "pynetdicom.dimse", "pynetdicom.fsm")


class _RoutineToDebug(logging.Filter):
    """Lowers pynetdicom's ERROR/WARNING records of :data:`_ROUTINE_PYNETDICOM`, and its ``LOGGER.exception`` of a
    socket error or time-out (a peer gone or too slow, which the sender or the listener reports), to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and (isinstance(record.msg, (OSError, TimeoutError))
                                                  or str(record.msg).startswith(_ROUTINE_PYNETDICOM)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_TAMER = _RoutineToDebug()


def tame_pynetdicom_logs() -> None:
    """Install :class:`_RoutineToDebug` on pynetdicom's loggers (idempotent; the sender, probe and listener call
    it before they use pynetdicom)."""
    for name in _PYNETDICOM_LOGGERS:
        logger = logging.getLogger(name)
        if _TAMER not in logger.filters:
            logger.addFilter(_TAMER)


def store_response_s(destination: Destination) -> float:
    """Seconds to wait for a C-STORE response from ``destination`` (:data:`STORE_RESPONSE_MIN_S`)."""
    return max(STORE_RESPONSE_MIN_S, 10.0 * destination.timeout_s)

_REJECT_REASONS = {
    (0x01, 0x01): "no reason given", (0x01, 0x02): "application context not supported",
    (0x01, 0x03): "our calling AE title is not known to it", (0x01, 0x07): "its called AE title is not this one",
    (0x03, 0x01): "temporary congestion", (0x03, 0x02): "local limit exceeded",
}


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str
    #: the C-STORE status, None when none came back (not sent, time-out, connection lost)
    status: int | None
    ok: bool
    #: a failure that sending again will not cure
    permanent: bool
    message: str
    #: the file's SOP class ("" when it was not read)
    sop_class: str = ""
    #: the storage SOP classes the destination accepted in this association (empty: no association)
    accepted: frozenset[str] = frozenset()
    #: the destination accepted no presentation context for the file's SOP class
    no_context: bool = False


def default_calling_ae(destination: Destination, listener_ae: str | None) -> str:
    """Our AE title towards ``destination``: its own setting, else the listener's AE title, else EDGESEG."""
    return destination.calling_ae_title or listener_ae or "EDGESEG"


def _status_outcome(path: Path, sop: str, status: int | None, comment: str) -> StoreOutcome:
    if status is None:
        return StoreOutcome(path, sop, None, False, False, "no response (time-out or connection lost)")
    text = f"status 0x{status:04X}" + (f" ({comment})" if comment else "")
    if status == 0x0000 or (status & 0xF000) == 0xB000:  # success, or success with a warning (coercion ...)
        return StoreOutcome(path, sop, status, True, False, text)
    if (status & 0xFF00) == 0xA700:  # out of resources: the PACS's disk, try again later
        return StoreOutcome(path, sop, status, False, False, f"{text}: out of resources at the destination")
    if status in (0x0122, 0x0124):  # SOP class not supported / not authorised
        return StoreOutcome(path, sop, status, False, True, f"{text}: the destination refuses this kind of object")
    return StoreOutcome(path, sop, status, False, True, f"{text}: the destination refused the object")


def _peer_aborted(abort: Any, calling_ae: str, destination: Destination) -> str:
    """The message for an A-ABORT the destination sent in answer to a C-STORE: with one of Orthanc's
    ``DicomAlwaysAllow*`` options on, an unknown calling AE title is accepted and then aborted at the first store."""
    source = {0: "service user", 2: "service provider"}.get(int(getattr(abort, "source", 0) or 0), "peer")
    return (f"the destination aborted the association at the C-STORE (A-ABORT from its {source}); it most often "
            f"means it does not know our AE title {calling_ae!r} (or not from this PC's address). Fix: register AE "
            f"title {calling_ae!r} with this PC's address on {destination.address} (Orthanc: DicomModalities), or "
            f"set calling_ae_title of destination {destination.name} to one it knows; then `edgeseg deliver "
            "--retry`")


def _no_context(sop_class: str, err: Exception) -> str:
    from pynetdicom.sop_class import LabelMapSegmentationStorage

    if sop_class == LabelMapSegmentationStorage:
        return ("the destination does not accept Label Map Segmentation Storage (a 2024 addition to DICOM that many "
                "PACS, e.g. Orthanc 1.10 and DCMTK 3.6, do not know yet). Fix: set outputs.seg_type: binary in "
                "watch_config.yaml (a BINARY SEG, which every SEG-capable PACS stores), or enable the SOP class on "
                "the PACS")
    return f"the destination does not accept SOP class {sop_class} with any transfer syntax offered ({err})"


def send_files(destination: Destination, files: Sequence[Path], calling_ae: str) -> list[StoreOutcome]:
    """C-STORE ``files`` to ``destination`` over one association; one :class:`StoreOutcome` per file, in order."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.pdu import A_ABORT_RQ
    from pynetdicom.sop_class import LabelMapSegmentationStorage, SegmentationStorage, Verification

    tame_pynetdicom_logs()
    #: transfer syntaxes proposed for each file besides its own (every peer takes implicit VR little endian)
    fallback_syntaxes = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    datasets: list[tuple[Path, Any]] = []
    outcomes: dict[Path, StoreOutcome] = {}
    for path in files:
        try:
            datasets.append((path, dcmread(path)))
        except FileNotFoundError:
            outcomes[path] = StoreOutcome(path, "", None, False, True, f"{path} no longer exists (result removed)")
        except Exception as err:  # noqa: BLE001 - a damaged result file is reported, never sent
            outcomes[path] = StoreOutcome(path, "", None, False, True, f"{path} is not readable DICOM ({err})")
    if datasets:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.connection_timeout = destination.timeout_s
        # a C-STORE response may take long (a slow PACS): giving up early makes it file a second copy later
        ae.dimse_timeout = ae.network_timeout = store_response_s(destination)
        # Verification too: the association comes about even when every storage context is refused, so "no
        # accepted presentation context" is told apart from a dead destination (and is permanent)
        ae.add_requested_context(Verification)
        contexts: dict[str, list[str]] = {}
        for _, ds in datasets:
            own = str(ds.file_meta.TransferSyntaxUID)
            syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
            for ts in (own, *fallback_syntaxes):
                if ts not in syntaxes:
                    syntaxes.append(ts)
        if LabelMapSegmentationStorage in contexts and SegmentationStorage not in contexts:
            # negotiated: a destination that does not take the label map says whether it takes a BINARY SEG
            contexts[SegmentationStorage] = list(fallback_syntaxes)
        for sop_class, syntaxes in contexts.items():
            ae.add_requested_context(sop_class, syntaxes)
        problem, permanent = "not sent: the association ended before it", False
        tls_args = (destination.tls.client_context(), destination.host) if destination.tls is not None else None
        aborts: list[Any] = []

        def on_pdu(event: Any) -> None:
            if isinstance(event.pdu, A_ABORT_RQ):
                aborts.append(event.pdu)

        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                                 tls_args=tls_args, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
        except OSError as err:  # e.g. a certificate that does not load
            assoc = None
            problem = f"cannot connect: {err}"
        accepted: frozenset[str] = frozenset()
        if assoc is not None and assoc.is_established:
            accepted = frozenset(str(cx.abstract_syntax) for cx in assoc.accepted_contexts)
            try:
                for path, ds in datasets:
                    sop = str(ds.SOPInstanceUID)
                    try:
                        rsp = assoc.send_c_store(ds)
                    except ValueError as err:  # no accepted presentation context for it
                        outcomes[path] = StoreOutcome(path, sop, None, False, True,
                                                      _no_context(str(ds.SOPClassUID), err), no_context=True)
                        continue
                    status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
                    comment = str(rsp.get("ErrorComment", "")) if rsp is not None else ""
                    if status is None and aborts:
                        problem, permanent = _peer_aborted(aborts[0], calling_ae, destination), True
                        outcomes[path] = StoreOutcome(path, sop, None, False, True, problem)
                    else:
                        outcomes[path] = _status_outcome(path, sop, status, comment)
                    if not assoc.is_established:
                        if not aborts:
                            problem = "not sent: the connection was lost during an earlier store of this association"
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
        elif assoc is not None and assoc.is_rejected:
            prim = assoc.acceptor.primitive
            result, source, diag = (int(getattr(prim, k, 0) or 0) for k in ("result", "result_source", "diagnostic"))
            reason = _REJECT_REASONS.get((0x03 if source == 0x03 else 0x01, diag), f"diagnostic {diag}")
            permanent = result == 0x01
            problem = (f"association rejected ({'permanent' if permanent else 'transient'}): {reason}; our AE "
                       f"title {calling_ae!r}, its AE title {destination.ae_title!r}")
            if permanent:
                problem += (f". Fix: register AE title {calling_ae!r} with this PC's address on {destination.address}"
                            f" (or check its AE title {destination.ae_title!r}), then `edgeseg deliver --retry`")
        elif assoc is not None and aborts:
            problem, permanent = (f"the destination aborted the association request; our AE title {calling_ae!r}, "
                                  f"its AE title {destination.ae_title!r}. Fix: register AE title {calling_ae!r} "
                                  f"with this PC's address on {destination.address}, then `edgeseg deliver "
                                  "--retry`"), True
        elif assoc is not None:
            problem = "no association (connection refused, aborted or timed out)"
        for path, ds in datasets:
            if path not in outcomes:
                outcomes[path] = StoreOutcome(path, str(ds.get("SOPInstanceUID", "")), None, False, permanent, problem)
    classes = {path: str(ds.get("SOPClassUID", "")) for path, ds in datasets}
    ordered = [dataclasses.replace(outcomes[p], sop_class=classes.get(p, ""), accepted=accepted) for p in files]
    for o in ordered:  # the delivery worker logs what an admin acts on (retries at WARNING, failures at ERROR)
        log.log(logging.INFO if o.ok else logging.DEBUG, "DICOM send: destination=%s file=%s sop=%s ok=%s %s",
                destination.name, o.path.name, o.sop_instance_uid, o.ok, o.message)
    return ordered


def echo(destination: Destination, calling_ae: str) -> tuple[bool, str]:
    """C-ECHO ``destination``: (True, "...") when it answered success; else (False, why)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    tame_pynetdicom_logs()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    ae.add_requested_context(Verification)
    tls_args = (destination.tls.client_context(), destination.host) if destination.tls is not None else None
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    except OSError as err:
        return False, f"cannot connect: {err}"
    if assoc.is_established:
        try:
            rsp = assoc.send_c_echo()
        finally:
            assoc.release()
        if rsp is not None and int(rsp.get("Status", -1)) == 0:
            return True, f"C-ECHO answered by {destination.address} as {calling_ae}"
        return False, f"C-ECHO got no success from {destination.address}"
    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        diag = int(getattr(prim, "diagnostic", 0) or 0)
        return False, (f"association rejected by {destination.address}: "
                       f"{_REJECT_REASONS.get((0x01, diag), f'diagnostic {diag}')} (we call as {calling_ae!r})")
    return False, f"no association with {destination.address} (connection refused, aborted or timed out)"
