"""The DICOM node's settings: the listener (Storage SCP), the destinations (Storage SCU) and delivery retries.

They are sections of ``watch_config.yaml`` (the settings schema, :mod:`edgeseg.runtime.settings`, declares and
validates them, a ``destinations`` entry key by key; this module holds the typed objects, their defaults and the
rules that are about DICOM: AE titles, UIDs, hosts, TLS). The listener is
off unless ``dicom_listener.enabled`` is true: edgeseg opens no port by default.
"""
from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Iterable

from pydicom import uid

#: Storage SOP classes the listener accepts by default: what an MR (or CT) console sends for a series, and what it
#: sends beside the images (presentation states, screenshots, reports, raw data), which is stored and not segmented.
DEFAULT_SOP_CLASSES: Final[tuple[str, ...]] = tuple(str(u) for u in (
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.EnhancedMRColorImageStorage,
    uid.LegacyConvertedEnhancedMRImageStorage,
    uid.MRSpectroscopyStorage,
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.LegacyConvertedEnhancedCTImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.GrayscaleSoftcopyPresentationStateStorage,
    uid.RawDataStorage,  # Siemens, Philips
    uid.BasicTextSRStorage,
    uid.EnhancedSRStorage,
    uid.ComprehensiveSRStorage,
    uid.EncapsulatedPDFStorage,
))

#: Transfer syntaxes the listener accepts by default: the uncompressed ones and the compressed ones edgeseg's
#: readers decode (pydicom with GDCM, CharLS, Pillow; README "Compressed DICOM"). JPEG Extended (``JPEGExtended12Bit``)
#: is left out: its 12-bit form is not decoded here, and a console offered only what we decode sends uncompressed.
DEFAULT_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = tuple(str(u) for u in (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,  # every peer supports it
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,  # retired, old consoles
    uid.JPEGLosslessSV1,  # JPEG Lossless, first-order prediction: PACS exports
    uid.JPEGLossless,  # process 14
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.JPEGBaseline8Bit,
    uid.RLELossless,
))

#: what a destination can be sent (result roles)
SEND_ROLES: Final[tuple[str, ...]] = ("seg", "sr")
#: result role -> the ``SegmentResult.files`` role it is taken from
RESULT_ROLE: Final[dict[str, str]] = {"seg": "dicom_seg", "sr": "dicom_sr"}

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def is_valid_uid(value: object) -> bool:
    """True for a UID that may name a file or folder: digits and dots, no empty component, at most 64 characters
    (PS3.5 9.1; leading zeros in a component, which some old devices write, are tolerated). Everything a peer sends
    is checked with it before it becomes part of a path."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def ae_title_problem(value: object) -> str | None:
    """Why ``value`` is not a valid AE title (1-16 characters of the default repertoire, no backslash or control
    characters, not only spaces), or None."""
    if not isinstance(value, str):
        return f"must be text, got {value!r}"
    stripped = value.strip()
    if not stripped:
        return "must not be empty"
    if len(stripped) > 16:
        return f"{stripped!r} is longer than 16 characters"
    if _AE_FORBIDDEN.search(stripped) or not stripped.isascii():
        return f"{stripped!r} holds a backslash, a control or a non-ASCII character"
    return None


def host_problem(value: object) -> str | None:
    """Why ``value`` is not an allowed-host entry (an IP address, a network in CIDR form such as 10.1.2.0/24, or
    a host name), or None."""
    if not isinstance(value, str) or not value.strip():
        return f"must be an IP address, a network (10.1.2.0/24) or a host name, got {value!r}"
    text = value.strip()
    try:
        ipaddress.ip_network(text, strict=False)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
        return None
    return f"{text!r} is neither an IP address, a network nor a host name"


@dataclass(frozen=True)
class TlsSettings:
    """TLS for an association: our certificate and key (PEM), the CA bundle that peers' certificates must chain to,
    and (listener) whether a peer must present a certificate (mutual TLS)."""

    certificate: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_peer_certificate: bool = False

    def server_context(self) -> ssl.SSLContext:
        """The listener's context (TLS 1.2 or newer; with ``require_peer_certificate`` a client certificate signed
        by ``ca`` is required)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca) if self.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certificate is not None:
            ctx.load_cert_chain(str(self.certificate), str(self.key) if self.key else None)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_peer_certificate else ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A sending context: the peer's certificate is verified against ``ca`` (or the system's CAs); ours is
        presented when configured (for a PACS that requires mutual TLS)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # DICOM peers are configured by address; the chain is still verified
        if self.certificate is not None:
            ctx.load_cert_chain(str(self.certificate), str(self.key) if self.key else None)
        return ctx


@dataclass(frozen=True)
class ListenerSettings:
    """``dicom_listener``: the Storage SCP that receives images from consoles into a watched root."""

    enabled: bool = False
    ae_title: str = "EDGESEG"
    port: int = 11112
    #: 0.0.0.0 (every interface) or one address of this PC
    bind_address: str = "0.0.0.0"
    #: calling AE titles allowed to associate (empty: any AE title from an allowed host)
    allowed_ae_titles: tuple[str, ...] = ()
    #: peer addresses, networks (CIDR) or host names allowed (empty: any host with an allowed AE title)
    allowed_hosts: tuple[str, ...] = ()
    max_associations: int = 4
    #: connections one peer address may hold at once (TLS handshakes and associations); more are closed at accept
    max_associations_per_host: int = 2
    #: the watched root received instances are written into (default: the first root)
    root: Path | None = None
    #: seconds after the association that sent a series ended before the series counts as complete (instead of the
    #: full quiet period): a console that opens the next association at once keeps the series open
    completion_grace_s: float = 5.0
    #: free space (MB) the root must keep: below it a store is answered "out of resources" (0xA700)
    min_free_mb: float = 500.0
    sop_classes: tuple[str, ...] = DEFAULT_SOP_CLASSES
    transfer_syntaxes: tuple[str, ...] = DEFAULT_TRANSFER_SYNTAXES
    tls: TlsSettings | None = None

    def allows(self, calling_ae: str, address: str) -> str | None:
        """None when a peer calling as ``calling_ae`` from ``address`` may associate; else why not."""
        calling = calling_ae.strip()
        if self.allowed_ae_titles and calling not in self.allowed_ae_titles:
            return f"calling AE title {calling!r} is not in dicom_listener.allowed_ae_titles"
        if self.allowed_hosts and not host_matches(address, self.allowed_hosts):
            return f"host {address} is not in dicom_listener.allowed_hosts"
        return None


def host_matches(address: str, allowed: Iterable[str]) -> bool:
    """True when ``address`` (the peer's IP) is one of ``allowed``: an address, a network, or a host name that
    resolves to it (resolved at each association: names of consoles change less often than their leases)."""
    import socket

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None)
        except OSError:
            continue
        if any(ipaddress.ip_address(str(info[4][0]).split("%")[0]) == ip for info in infos):
            return True
    return False


@dataclass(frozen=True)
class Destination:
    """One entry of ``destinations``: a DICOM node results are sent to (a PACS, the console)."""

    name: str
    ae_title: str
    host: str
    port: int
    #: what to send: "seg" (the DICOM-SEG) and/or "sr" (the TID 1500 measurement report)
    send: tuple[str, ...] = SEND_ROLES
    #: our AE title towards this destination (default: the listener's, else EDGESEG)
    calling_ae_title: str | None = None
    tls: TlsSettings | None = None
    #: seconds to wait for the peer at each step (connect, association, each store)
    timeout_s: float = 30.0

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DeliverySettings:
    """``delivery``: how results are retried until a destination has them."""

    #: seconds before the first retry; doubled at each failure up to ``retry_max_s``
    retry_initial_s: float = 30.0
    retry_max_s: float = 900.0
    #: hours after which a result that could not be delivered is given up (reported as failed)
    max_age_h: float = 72.0


@dataclass(frozen=True)
class NodeSettings:
    """Everything of the DICOM node, as one object on the watch configuration."""

    listener: ListenerSettings = field(default_factory=ListenerSettings)
    destinations: tuple[Destination, ...] = ()
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
