"""Which storage SOP classes a destination accepts: one association that proposes them, nothing sent.

``edgeseg doctor`` asks this before the first result is due: a PACS that does not know the SOP class edgeseg writes
(Label Map Segmentation Storage, ``LabelMapSegmentationStorage``, is unknown to Orthanc 1.10 and DCMTK 3.6) rejects its
presentation context at association, and every result sent to it would fail. The association proposes each class
with the transfer syntaxes :func:`~edgeseg.runtime.node.send.send_files` falls back to (explicit and implicit VR
little endian), plus Verification, so that it is established even when every storage class is refused (pynetdicom
aborts an association without any accepted context); then it is released.
"""
from __future__ import annotations

import logging
from typing import Sequence

# this module is imported only where doctor probes a destination (inside functions), never at the runtime's top
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification

from edgeseg.errors import DicomNodeError
from edgeseg.runtime.node.settings import Destination

log = logging.getLogger(__name__)

VERIFICATION = Verification
#: the transfer syntaxes proposed for each class (what every sender falls back to)
PROBE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def accepted_sop_classes(destination: Destination, calling_ae: str, sop_classes: Sequence[str]) -> dict[str, bool]:
    """For each of ``sop_classes``: True when ``destination`` accepted a presentation context for it in an
    association opened as ``calling_ae``; the association is released without sending anything.

    Raises :class:`DicomNodeError` naming the destination's address when no association comes about (connection
    refused, time-out, association rejected, TLS failure).
    """
    from pynetdicom import AE

    from edgeseg.runtime.node.send import tame_pynetdicom_logs

    tame_pynetdicom_logs()
    classes = list(dict.fromkeys(sop_classes))
    if len(classes) > 127:
        raise ValueError("at most 127 SOP classes can be proposed in one association (besides Verification)")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    ae.add_requested_context(VERIFICATION)
    for sop_class in classes:
        ae.add_requested_context(sop_class, list(PROBE_SYNTAXES))
    tls_args = (destination.tls.client_context(), destination.host) if destination.tls is not None else None
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    except OSError as err:  # e.g. a certificate that does not load
        raise DicomNodeError(f"Cannot connect to {destination.address} to check its SOP classes: {err}") from err
    if assoc.is_established:
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        finally:
            assoc.release()
        result = {sop_class: sop_class in accepted for sop_class in classes}
        log.debug("SOP classes accepted by %s (as %s): %s", destination.address, calling_ae, result)
        return result
    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        diag = int(getattr(prim, "diagnostic", 0) or 0)
        raise DicomNodeError(f"Association rejected by {destination.address} (diagnostic {diag}; we call as "
                             f"{calling_ae!r}) while checking its SOP classes. Fix: register our AE title on it.")
    raise DicomNodeError(f"No association with {destination.address} (connection refused, aborted or timed out) "
                         "while checking its SOP classes.")
