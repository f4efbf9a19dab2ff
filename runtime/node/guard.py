"""The listener's front door: what a host that is not a console can do to it, bounded.

pynetdicom's ``ThreadedAssociationServer`` accepts every connection, wraps it in TLS in its one accept thread (no
time-out: one idle TCP connection blocked a TLS listener), reads whole PDUs of any announced length into memory
(three connections from a stranger took 3 GB), waits for the rest of a PDU without a deadline (a peer trickling a
byte every 10 s held an association past every time-out) and writes received datasets to the system temporary
folder. :class:`GuardedServer` (a subclass, made by ``AE.make_server``) and :class:`GuardedSocket` change that:

* **at accept, before any byte is read**: a peer address not in ``allowed_hosts`` (when set) is closed, and so is
  one more connection from an address that already holds ``max_associations_per_host``; the refusal is logged at
  WARNING with the address and the reason (the AE titles are not known yet: nothing was read);
* **refusal lines are bounded per peer** (:class:`RefusalLog`): the first refusal of each peer address and reason is
  logged in full; further ones within :data:`REFUSAL_SUMMARY_S` are counted, and one summary line per peer and
  window says how many were suppressed and why (a stranger reconnecting in a loop cannot flood the log);
* **TLS** is negotiated in the connection's own thread with a deadline (:data:`TLS_HANDSHAKE_S`): a half-open TLS
  peer holds one thread for that long, never the accept loop; a failed handshake is logged with the address;
* **every PDU** must fit the maximum length we announce (:data:`MAX_PDU`; a longer one ends the connection before
  its body is read: memory per association stays ~1 MB whatever the instance size) and must arrive within
  :data:`PDU_TIMEOUT_S` of its first byte (a trickling peer is cut); between PDUs pynetdicom's own timers hold: the
  ARTIM timer (``acse_timeout``) for a peer that connects and sends nothing, ``network_timeout`` for an idle one;
* **received datasets** are streamed (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``) into ``<root>/.edgeseg-incoming``
  (:data:`INCOMING_DIR`: inside the watched root, on its disk, so ``min_free_mb`` covers it; hidden, so the watcher
  never reads it), never into the system temporary folder; what a kill -9 leaves there is removed at the next start;
* :meth:`GuardedServer.close_all` ends the accept loop, the handshakes and every association (their sockets are shut
  down, which no peer can delay): the listener stops within about a second whatever peers do.
"""
from __future__ import annotations

import logging
import socket
import ssl
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: the folder under the listener's root that received datasets stream into
INCOMING_DIR = ".edgeseg-incoming"
#: seconds a peer has to complete the TLS handshake
TLS_HANDSHAKE_S = 10.0
#: seconds one PDU may take from its first byte to its last
PDU_TIMEOUT_S = 60.0
#: the maximum PDU length we announce and accept (bytes of a PDU's body)
MAX_PDU = 1 << 20
#: seconds an accepted connection may stay silent before its A-ASSOCIATE-RQ (pynetdicom's ARTIM timer)
ARTIM_S = 10.0
#: seconds of one peer's refusal window: its first refusal of each reason is logged in full, the rest of the window
#: is summarized in one line
REFUSAL_SUMMARY_S = 60.0
#: peer addresses whose refusals are tracked at once (a larger crowd: the oldest are summarized and forgotten)
REFUSAL_PEERS_MAX = 1024
#: reasons remembered per peer (beyond them a new reason only counts in the summary)
REFUSAL_REASONS_MAX = 32


class _PeerRefusals:
    __slots__ = ("since", "reasons", "suppressed")

    def __init__(self, since: float) -> None:
        self.since = since
        self.reasons: set[str] = set()
        self.suppressed: Counter[str] = Counter()


class RefusalLog:
    """The listener's refusal lines, bounded per peer address.

    :meth:`refused` logs the first refusal of each (address, reason kind) in full at WARNING, as
    ``DICOM <what> refused: host=... port=... calling_ae=... called_ae=... reason=...``. Later refusals of that kind
    from that address are counted; when the address's window (:data:`REFUSAL_SUMMARY_S` from its first line) ends,
    one WARNING ``DICOM refusals suppressed: host=... count=... within_s=... reasons=kind xN, ...`` says how many
    lines were left out, and a new window starts. A window without suppressed refusals ends silently, so the next
    refusal of that address is logged in full again. Windows that ended are summarized at the next refusal or
    connection (:meth:`flush`) and all of them when the listener stops (:meth:`flush` with ``everything``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._peers: dict[str, _PeerRefusals] = {}
        self._next_due = float("inf")

    def refused(self, what: str, host: str, port: Any, reason: str, kind: str, calling: str = "-",
                called: str = "-") -> bool:
        """Record one refusal; True when it was logged in full (False: counted for the summary)."""
        now = self.clock()
        with self._lock:
            summaries = self._due(now, everything=False)
            peer = self._peers.get(host)
            if peer is None:
                if len(self._peers) >= REFUSAL_PEERS_MAX:  # a crowd: summarize and forget the oldest
                    oldest = min(self._peers, key=lambda h: self._peers[h].since)
                    summaries.append(self._summary(oldest, self._peers.pop(oldest), now))
                peer = self._peers[host] = _PeerRefusals(now)
                self._next_due = min(self._next_due, now + REFUSAL_SUMMARY_S)
            full = kind not in peer.reasons and len(peer.reasons) < REFUSAL_REASONS_MAX
            if full:
                peer.reasons.add(kind)
            else:
                peer.suppressed[kind] += 1
        self._emit(summaries)
        if full:
            log.warning("DICOM %s refused: host=%s port=%s calling_ae=%s called_ae=%s reason=%s", what, host, port,
                        calling, called, reason)
        return full

    def flush(self, everything: bool = False) -> None:
        """Log the summaries of windows that ended (``everything``: of every window, e.g. when stopping)."""
        now = self.clock()
        if not everything and now < self._next_due:
            return
        with self._lock:
            summaries = self._due(now, everything)
        self._emit(summaries)

    def _due(self, now: float, everything: bool) -> list[str | None]:
        """(under the lock) The summaries of the windows that ended; those peers start a new window or go."""
        if not everything and now < self._next_due:
            return []
        out: list[str | None] = []
        for host in list(self._peers):
            peer = self._peers[host]
            if not everything and now - peer.since < REFUSAL_SUMMARY_S:
                continue
            if peer.suppressed and not everything:
                out.append(self._summary(host, peer, now))
                peer.since, peer.suppressed = now, Counter()
            else:
                out.append(self._summary(host, peer, now))
                del self._peers[host]
        self._next_due = min((p.since + REFUSAL_SUMMARY_S for p in self._peers.values()), default=float("inf"))
        return out

    @staticmethod
    def _summary(host: str, peer: _PeerRefusals, now: float) -> str | None:
        count = sum(peer.suppressed.values())
        if not count:
            return None
        reasons = ", ".join(f"{kind} x{n}" for kind, n in sorted(peer.suppressed.items()))
        return (f"DICOM refusals suppressed: host={host} count={count} within_s={now - peer.since:.0f} "
                f"reasons={reasons} (the first of each reason is logged in full above; a host that keeps "
                "connecting: find out what it is, or block it at the firewall)")

    @staticmethod
    def _emit(lines: list[str | None]) -> None:
        for line in lines:
            if line is not None:
                log.warning("%s", line)


def peer_text(assoc: Any) -> tuple[str, str, str]:
    """(address, calling AE title, called AE title) of an acceptor association, as far as they are known."""
    req = assoc.requestor
    primitive = getattr(req, "primitive", None)
    calling = getattr(primitive, "calling_ae_title", None) or getattr(req, "ae_title", None) or "-"
    called = getattr(primitive, "called_ae_title", None) or "-"
    return str(getattr(req, "address", "?")), str(calling).strip() or "-", str(called).strip() or "-"


class GuardedSocket(AssociationSocket):
    """pynetdicom's acceptor socket with a bound on each PDU's length and a deadline on its arrival (the class of
    the socket :class:`GuardedHandler` makes; it adds no state)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if nr_bytes > MAX_PDU + 64:
            server = getattr(self.assoc, "_server", None)
            if isinstance(server, GuardedServer):
                server.refused_assoc(self.assoc, f"a PDU of {nr_bytes} bytes announced (at most {MAX_PDU} are "
                                     "accepted): connection closed before reading it", "PDU too long")
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the maximum of {MAX_PDU}")
        deadline = time.monotonic() + PDU_TIMEOUT_S
        data = bytearray(nr_bytes)  # received into in place: no chunk is copied twice
        got = 0
        with memoryview(data) as view:
            while got < nr_bytes:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError(f"PDU not received within {PDU_TIMEOUT_S:g} s")
                    sock.settimeout(left)
                    n = sock.recv_into(view[got:], nr_bytes - got)
                except TimeoutError:
                    server = getattr(self.assoc, "_server", None)
                    if isinstance(server, GuardedServer) and not server._closing:
                        server.refused_assoc(self.assoc, f"a PDU did not arrive within {PDU_TIMEOUT_S:g} s (a peer "
                                             "sending too slowly, or silent in the middle of one): association ended",
                                             "PDU too slow")
                    raise
                if not n:
                    break
                got += n
        return data if got == nr_bytes else data[:got]


class GuardedHandler(RequestHandler):
    """Makes the association's socket a :class:`GuardedSocket`."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = GuardedSocket
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the front door described in the module docstring.

    ``allows_host(address) -> reason or None``, ``per_host`` and ``incoming_dir`` are set by :func:`start_guarded`.
    """

    daemon_threads = True
    block_on_close = False
    #: the listen backlog: a burst of connections waits to be accepted (and refused) instead of being dropped
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", GuardedHandler)
        super().__init__(*args, **kwargs)
        self.allows_host: Callable[[str], str | None] = lambda host: None
        self.per_host = 2
        self.incoming_dir: Path | None = None
        self.stats: Counter[str] = Counter()
        #: every refusal line of this listener (the receiver's association refusals too), bounded per peer
        self.refusals = RefusalLog()
        self._lock = threading.Lock()
        #: every connection admitted and not closed yet -> its peer address (a closed socket has fileno -1)
        self._open: dict[Any, str] = {}
        self._refused_assocs: set[int] = set()
        self._closing = False

    # ---------------------------------------------------------------------------------------------- accepting

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: TLS is negotiated later, in the connection's own thread."""
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Before any byte is read: the peer's address, and how many connections it holds already."""
        host = str(client_address[0])
        self.refusals.flush()
        reason = self.allows_host(host)
        kind = "host not allowed"
        if reason is None:
            with self._lock:
                for sock in [k for k in self._open if _closed(k)]:
                    del self._open[sock]
                held = sum(1 for h in self._open.values() if h == host)
                if self._closing:
                    reason, kind = "the listener is stopping", "listener stopping"
                elif held >= self.per_host:
                    reason = (f"{held} connection(s) from this host already (dicom_listener.max_associations_per_host"
                              f" {self.per_host})")
                    kind = "max_associations_per_host"
                else:
                    self._open[request] = host
                    return True
        self.refused(host, client_address[1], reason, kind)
        return False

    def refused(self, host: str, port: Any, reason: str, kind: str, calling: str = "-", called: str = "-") -> None:
        """A refused connection: counted; logged with who and why, the first of each ``kind`` per peer in full
        (:class:`RefusalLog`)."""
        self.stats["refused"] += 1
        self.refusals.refused("connection", host, port, reason, kind, calling, called)

    def refused_assoc(self, assoc: Any, reason: str, kind: str) -> None:
        """A refusal once the association exists (a PDU too long or too slow), once per association."""
        with self._lock:
            if id(assoc) in self._refused_assocs:
                return
            self._refused_assocs.add(id(assoc))
        address, calling, called = peer_text(assoc)
        port = getattr(assoc.requestor, "port", "?")
        self.refused(address, port, reason, kind, calling, called)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """(the connection's thread) TLS handshake with a deadline, then pynetdicom's association."""
        host = str(client_address[0])
        raw = request
        try:
            request.settimeout(PDU_TIMEOUT_S)  # no send or receive blocks for ever, whatever the peer does
            if self.ssl_context is not None:
                request.settimeout(TLS_HANDSHAKE_S)
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                    with self._lock:  # the raw socket is detached now: count the TLS one
                        self._open[request] = self._open.pop(raw, host)
                except (OSError, ssl.SSLError, ValueError) as err:
                    timed_out = isinstance(err, TimeoutError)
                    why = (f"no TLS handshake within {TLS_HANDSHAKE_S:g} s" if timed_out
                           else f"TLS handshake failed: {err}")
                    if not self._closing:
                        self.refused(host, client_address[1], why,
                                     "TLS handshake timed out" if timed_out else "TLS handshake failed")
                    self.shutdown_request(raw)
                    return
                request.settimeout(PDU_TIMEOUT_S)
            if self._closing:
                self.shutdown_request(request)
                return
            self.finish_request(request, client_address)  # starts the association's thread
        except Exception:  # noqa: BLE001 - as pynetdicom's own: the connection goes, the listener stays
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    # ------------------------------------------------------------------------------------------------ closing

    def close_all(self, timeout: float = 2.0) -> None:
        """Stop accepting, end TLS handshakes and every association now (their sockets are shut down: no peer can
        hold this up), and wait at most ``timeout`` seconds for their threads."""
        self._closing = True
        self.shutdown()  # the accept loop (pynetdicom: also closes the listening socket)
        with self._lock:
            handshaking = list(self._open)
        for sock in handshaking:
            _shut(sock)
        assocs = list(self.active_associations)
        for assoc in assocs:
            peer_sock: Any = getattr(getattr(assoc.dul, "socket", None), "socket", None)
            if peer_sock is not None:
                _shut(peer_sock)
        deadline = time.monotonic() + timeout
        for assoc in assocs:
            assoc.join(max(0.0, deadline - time.monotonic()))
        left = [a for a in assocs if a.is_alive()]
        self.refusals.flush(everything=True)
        if left:
            log.info("DICOM listener: %d association thread(s) still ending after %.1f s", len(left), timeout)


def _closed(sock: Any) -> bool:
    try:
        return bool(sock.fileno() == -1)
    except (OSError, ValueError):
        return True


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ----------------------------------------------------------------------------------- where datasets stream to

_dirs_lock = threading.Lock()
_last_dir: list[Path] = []


def _incoming_dir() -> Path | None:
    """The incoming folder of the listener whose association this thread serves (the DUL thread or the
    association's), else of the last listener started."""
    thread: Any = threading.current_thread()
    assoc = getattr(thread, "assoc", None) if not hasattr(thread, "_server") else thread
    server = getattr(assoc, "_server", None)
    folder = getattr(server, "incoming_dir", None)
    if folder is not None:
        return Path(folder)
    with _dirs_lock:
        return _last_dir[-1] if _last_dir else None


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    folder = _incoming_dir()
    if folder is not None and "dir" not in kwargs:
        kwargs["dir"] = str(folder)
        try:
            return tempfile.NamedTemporaryFile(*args, **kwargs)
        except FileNotFoundError:  # the folder was removed while listening: made again
            folder.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile(*args, **kwargs)


def stream_datasets_into(folder: Path) -> None:
    """Make pynetdicom stream received datasets into ``folder`` (created; what a killed listener left there
    removed) instead of the system temporary folder."""
    from pynetdicom import _config, dimse_messages

    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for stale in folder.iterdir():
        try:
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
                removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d partly received dataset(s) left by an interrupted listener in %s", removed, folder)
    with _dirs_lock:
        _last_dir.append(folder)
    _config.STORE_RECV_CHUNKED_DATASET = True  # stream each dataset to disk; never hold it in memory
    setattr(dimse_messages, "NamedTemporaryFile", _named_temporary_file)


def forget_incoming(folder: Path) -> None:
    with _dirs_lock:
        if folder in _last_dir:
            _last_dir.remove(folder)

