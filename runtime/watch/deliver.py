"""Delivery of results to the configured destinations, from the job store's persistent outbox.

The watcher records what to send when it records a series ``done``/``partial`` (:meth:`JobStore.mark_done`, one
transaction); this worker thread sends what is due and records the outcome:

* sent and confirmed by the destination: ``sent``;
* a failure that may pass (connection refused, time-out, transient rejection, "out of resources"): tried again
  after ``retry_initial_s``, doubled at each failure up to ``retry_max_s``, logged at WARNING (pynetdicom's own
  ERROR lines for these are lowered to DEBUG: :func:`~edgeseg.runtime.node.send.tame_pynetdicom_logs`); meanwhile
  the destination is C-ECHOed every ``ECHO_EVERY_S`` and gets its deliveries as soon as it answers;
  ``edgeseg deliver --now`` makes every pending delivery due at once;
* a failure that will not pass (association rejected permanently, e.g. our AE title unknown to the PACS; the object
  refused), a destination no longer configured, a result file removed, or a delivery older than ``max_age_h``:
  ``failed``, logged as an error and listed by ``edgeseg status``; ``edgeseg deliver --retry`` makes them due again.
  A result with a failed delivery is not a success: ``on_settled`` (the watcher) marks its series partial with an
  error file beside it, and done again once a retry delivered everything.

A kill during a send leaves the row ``pending``: it is sent again after the restart with the same SOP Instance UID,
so the PACS keeps one copy. Files due for one destination go over one association; one thread sends, so a result
is never in flight twice, and a C-STORE response is awaited for ``send.store_response_s`` (a slow PACS is not sent
a second copy because it took longer than ``timeout_s``).

Settings changed since a result was made: a SEG not sent yet that is a label map while ``outputs.seg_type`` is
``binary`` now (the watcher restarted with the new setting, ``edgeseg deliver --now``) is rendered as a BINARY SEG
(:mod:`edgeseg.runtime.watch.seg_variant`) before it is sent, and its outbox rows (SEG and SR of that destination)
are replaced by the rendered pair, so the row names the object actually sent. A BINARY SEG not sent yet while the
setting says ``labelmap`` goes as it is (every PACS that stores SEGs takes BINARY ones).

SEG type, negotiated per destination: the association proposes the label-map and the BINARY SEG classes. Where
the label map is accepted ``seg.dcm`` goes as written; where only BINARY is, a BINARY SEG rendered from the result
(:mod:`edgeseg.runtime.watch.seg_variant`, deterministic UIDs) goes, and the row records the kind and the SOP
Instance UID actually sent. An SR is sent only once its SEG was accepted by that destination, and it is the SR
that references exactly that SEG; an SR whose SEG was refused fails with it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeseg.runtime.node.settings import DeliverySettings, Destination
from edgeseg.runtime.watch.store import FAILED, PENDING, SENT, DeliveryRow, JobStore

log = logging.getLogger(__name__)

#: send_files(destination, files, calling_ae) -> outcomes (edgeseg.runtime.node.send.send_files)
Sender = Callable[..., list]
#: echo(destination, calling_ae) -> (ok, why) (edgeseg.runtime.node.send.echo)
Echoer = Callable[..., tuple[bool, str]]
#: seconds between C-ECHOs to a destination whose deliveries wait in back-off (it gets them as soon as it answers)
ECHO_EVERY_S = 5.0
#: seconds a back-off C-ECHO waits for the destination
ECHO_TIMEOUT_S = 5.0


def _labelmap_class() -> str:
    from pynetdicom.sop_class import LabelMapSegmentationStorage

    return str(LabelMapSegmentationStorage)


def _binary_class() -> str:
    from pydicom.uid import SegmentationStorage

    return str(SegmentationStorage)


def backoff_s(attempts: int, settings: DeliverySettings) -> float:
    """Seconds before the next try after ``attempts`` failed tries (1, 2, ...)."""
    return float(min(settings.retry_max_s, settings.retry_initial_s * 2 ** max(0, attempts - 1)))


def refuse_untakeable(config: Any) -> None:
    """Raise :class:`~edgeseg.errors.ConfigError` with ``edgeseg doctor``'s messages when a destination that answers
    does not accept what it would be sent (the watcher does not start: every result would fail, or an SR would go
    without its SEG). Called once when the watcher starts with destinations."""
    from edgeseg.errors import ConfigError
    from edgeseg.runtime.watch.doctor import destination_refusals

    refusals = destination_refusals(config)
    if refusals:
        raise ConfigError("The destinations cannot take what this configuration sends them (`edgeseg doctor` says "
                          "the same):\n  " + "\n  ".join(refusals))


class DeliveryWorker:
    """Sends due deliveries until ``stop`` is set. ``wake()`` after new deliveries were recorded."""

    def __init__(self, store: JobStore, destinations: Sequence[Destination], settings: DeliverySettings,
                 calling_ae: str | None, stop: threading.Event, sender: Sender | None = None,
                 clock: Callable[[], float] = time.time,
                 on_settled: Callable[[str], None] | None = None, echoer: Echoer | None = None,
                 seg_type: str | None = None) -> None:
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.settings = settings
        self.calling_ae = calling_ae
        self._stop = stop
        self._wake = threading.Event()
        self._sender = sender
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._busy = threading.Event()
        #: called with the series key of each result whose delivery ended (sent or failed) in a round
        self.on_settled = on_settled
        self._echo = echoer
        self._last_echo = float("-inf")
        #: destinations seen to refuse the label-map SEG but take a BINARY one (learnt in an association)
        self._binary_only: dict[str, bool] = {}
        #: ``outputs.seg_type`` now: a label-map SEG not sent yet is rendered BINARY when it says "binary"
        self.seg_type = seg_type

    def wake(self) -> None:
        self._wake.set()

    @property
    def busy(self) -> bool:
        """True while a send is under way or a delivery is due now (``watch --once`` waits for them)."""
        if self._busy.is_set() or self._wake.is_set():
            return True
        try:
            nxt = self.store.next_delivery_at()
        except Exception:  # noqa: BLE001 - a store error here only delays the idle report
            return True
        return nxt is not None and nxt <= self.clock()

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._busy.set()
            try:
                sent_any = self.deliver_due()
            except Exception:  # noqa: BLE001 - a bad round must not stop deliveries for good
                log.exception("delivery round failed; trying again shortly")
                sent_any = False
            finally:
                self._busy.clear()
            if sent_any:
                continue
            try:
                if self.echo_backed_off():
                    continue
            except Exception:  # noqa: BLE001 - a failed probe only delays the next try
                log.debug("C-ECHO of backed-off destinations failed", exc_info=True)
            wait = 1.0
            try:
                nxt = self.store.next_delivery_at()
                if nxt is not None:
                    wait = max(0.05, min(wait, nxt - self.clock()))
            except Exception:  # noqa: BLE001
                pass
            self._wake.wait(wait)

    def deliver_due(self) -> bool:
        """One round: every due delivery, grouped by destination, SEGs before SRs. True when something was
        attempted."""
        now = self.clock()
        rows = self.store.due_deliveries(now)
        if not rows:
            return False
        by_destination: dict[str, list[DeliveryRow]] = defaultdict(list)
        settled: set[str] = set()  # series whose deliveries ended in this round (a row sent or failed)
        max_age = self.settings.max_age_h * 3600.0
        for row in rows:
            if now - row.created_at > max_age:
                settled.add(row.job_key)
                self._fail(row, f"not delivered within delivery.max_age_h ({self.settings.max_age_h:g} h); last "
                           f"error: {row.last_error or 'none'}", count=False)
            elif row.destination not in self.destinations:
                settled.add(row.job_key)
                self._fail(row, f"destination {row.destination!r} is no longer configured", count=False)
            else:
                by_destination[row.destination].append(row)
        for name, batch in by_destination.items():
            if self._stop.is_set():
                break
            segs = [r for r in batch if r.role != "sr"]
            if segs:
                self._send_segs(name, segs, settled)
            srs = [r for r in batch if r.role == "sr"]
            if srs and not self._stop.is_set():
                self._send_srs(name, srs, settled)
        if self.on_settled is not None:
            for key in sorted(settled):
                self.on_settled(key)
        return True

    # ------------------------------------------------------------------------------------------------- sending

    def _send(self, name: str, files: list[Path]) -> list[Any]:
        from edgeseg.runtime.node.send import default_calling_ae, send_files

        destination = self.destinations[name]
        sender = self._sender or send_files
        return list(sender(destination, files, default_calling_ae(destination, self.calling_ae)))

    def _send_segs(self, name: str, rows: list[DeliveryRow], settled: set[str]) -> None:
        """The SEGs: as written, or, to a destination that does not take the label-map SEG but a BINARY one, the
        BINARY SEG rendered from the result (:mod:`edgeseg.runtime.watch.seg_variant`)."""
        direct: list[DeliveryRow] = []
        binary: list[DeliveryRow] = []
        for row in [r for r in map(self._as_configured, rows) if r is not None]:
            (binary if self._binary_only.get(name) and self._is_labelmap(row.file) else direct).append(row)
        if direct:
            for row, outcome in zip(direct, self._send(name, [r.file for r in direct])):
                if (not outcome.ok and outcome.no_context and outcome.sop_class == _labelmap_class()
                        and _binary_class() in outcome.accepted):
                    self._binary_only[name] = True
                    log.info("destination %s does not take label-map SEGs but BINARY ones: it gets a BINARY SEG "
                             "rendered from each label-map result", name)
                    binary.append(row)
                    continue
                kind = "labelmap" if outcome.sop_class == _labelmap_class() else "binary"
                self._record(name, row, outcome, settled, kind)
        if binary:
            files: list[Path] = []
            rendered: list[DeliveryRow] = []
            for row in binary:
                try:
                    variant = self._variant(row)
                except Exception as err:  # noqa: BLE001 - an OutputError saying why; the row fails for good
                    settled.add(row.job_key)
                    self._fail(row, f"{self.destinations[name].address} does not take label-map SEGs, and no BINARY "
                               f"SEG could be rendered for it: {err}")
                    continue
                files.append(variant.seg)
                rendered.append(row)
            if rendered:
                for row, outcome in zip(rendered, self._send(name, files)):
                    self._record(name, row, outcome, settled, "binary")

    def _as_configured(self, row: DeliveryRow) -> DeliveryRow | None:
        """``row`` (a SEG not sent yet) as the settings of now would have it: a label map while ``seg_type`` is
        "binary" is rendered BINARY and its rows replaced (:meth:`JobStore.replace_objects`); None when the
        destination has that object already."""
        if self.seg_type != "binary" or row.role != "seg" or not self._is_labelmap(row.file):
            return row
        try:
            variant = self._variant(row)
        except Exception as err:  # noqa: BLE001 - an OutputError saying why; the stored SEG goes as it is
            log.warning("pending SEG is a label map but outputs.seg_type is binary now, and no BINARY SEG could be "
                        "rendered from it (%s): it is sent as stored: destination=%s key=%s", err, row.destination,
                        row.job_key)
            return row
        replaced = self.store.replace_objects(row, variant.seg, variant.seg_uid, variant.sr, variant.sr_uid)
        log.info("pending label-map SEG replaced by a BINARY one (outputs.seg_type is binary now): destination=%s "
                 "key=%s sop_instance_uid=%s replaced=%s", row.destination, row.job_key, variant.seg_uid,
                 row.sop_instance_uid)
        return replaced

    def _send_srs(self, name: str, rows: list[DeliveryRow], settled: set[str]) -> None:
        """The SRs whose SEG this destination accepted (each referencing exactly the SEG it got); an SR whose SEG was
        refused is not sent (an SR in PACS referencing a SEG it never received is an orphan)."""
        ready: list[tuple[DeliveryRow, Path]] = []
        for stale in rows:
            now_rows = self.store.deliveries_of(stale.job_key)  # as the SEGs of this round left them (replaced?)
            row = next((d for d in now_rows if d.id == stale.id), None)
            if row is None or row.state != PENDING:
                continue
            seg = next((d for d in now_rows if d.destination == name and d.role == "seg"), None)
            if seg is None:  # this destination is sent no SEG (send: [sr]): the SR as written
                ready.append((row, row.file))
            elif seg.state == FAILED:
                settled.add(row.job_key)
                self._fail(row, f"not sent: its SEG was not accepted by {name} ({seg.last_error or 'failed'}); it "
                           "is sent after its SEG (`edgeseg deliver --retry` tries both again)", count=False)
            elif seg.state != SENT:
                self.store.delivery_defer(row.id, max(seg.next_at, self.clock() + 1.0),
                                          f"waits for its SEG ({seg.last_error or 'pending'})")
            elif seg.sent_kind == "binary" and self._is_labelmap(seg.file):
                try:
                    variant = self._variant(seg)
                except Exception as err:  # noqa: BLE001 - the SEG was sent from it moments ago; say why not now
                    settled.add(row.job_key)
                    self._fail(row, f"the SR of the BINARY SEG sent to {name} cannot be made: {err}")
                    continue
                if variant.sr is None or variant.seg_uid != seg.sent_sop_instance_uid:
                    settled.add(row.job_key)
                    self._fail(row, "the BINARY SEG sent changed since (result made again); its SR is not sent")
                    continue
                ready.append((row, variant.sr))
            else:
                ready.append((row, row.file))
        if ready:
            for (row, _), outcome in zip(ready, self._send(name, [f for _, f in ready])):
                self._record(name, row, outcome, settled, "sr")

    def _record(self, name: str, row: DeliveryRow, outcome: Any, settled: set[str], kind: str) -> None:
        """Store and log one outcome: sent (with the UID actually sent), failed for good, or retried later."""
        if outcome.ok or outcome.permanent:
            settled.add(row.job_key)
        if outcome.ok:
            sent_uid = outcome.sop_instance_uid or row.sop_instance_uid
            self.store.delivery_sent(row.id, sent_uid, kind)
            self.sent += 1
            log.info("result delivered: destination=%s key=%s role=%s kind=%s sop_instance_uid=%s", name,
                     row.job_key, row.role, kind, sent_uid)
        elif outcome.permanent:
            message = outcome.message
            if outcome.no_context and outcome.sop_class == _labelmap_class():
                message = (f"{self.destinations[name].address} accepts neither Label Map Segmentation Storage nor "
                           "Segmentation Storage (BINARY SEG). Fix: allow DICOM-SEG on it, or remove seg from send "
                           f"of destination {name}")
            self._fail(row, message)
        else:
            delay = backoff_s(row.attempts + 1, self.settings)
            self.store.delivery_retry(row.id, self.clock() + delay, outcome.message)
            log.warning("delivery will be retried: destination=%s key=%s role=%s in_s=%.0f attempt=%d "
                        "reason=%s", name, row.job_key, row.role, delay, row.attempts + 1, outcome.message)

    def _variant(self, row: DeliveryRow) -> Any:
        from edgeseg.runtime.watch.seg_variant import binary_variant

        return binary_variant(row.file.parent)

    @staticmethod
    def _is_labelmap(path: Path) -> bool:
        from pydicom import dcmread

        try:
            return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID) == \
                _labelmap_class()
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the send itself
            return False

    # ------------------------------------------------------------------------------------------ back-off probing

    def echo_backed_off(self) -> int:
        """C-ECHO each destination whose deliveries wait in back-off (at most every ``ECHO_EVERY_S``); one that
        answers gets its pending deliveries due now. Returns how many became due."""
        from edgeseg.runtime.node.send import default_calling_ae, echo

        now = self.clock()
        if now - self._last_echo < ECHO_EVERY_S:
            return 0
        self._last_echo = now
        due = 0
        for name in sorted(self.store.backed_off_destinations(now) & set(self.destinations)):
            if self._stop.is_set():
                break
            destination = self.destinations[name]
            quick = dataclasses.replace(destination, timeout_s=min(destination.timeout_s, ECHO_TIMEOUT_S))
            ok, _ = (self._echo or echo)(quick, default_calling_ae(destination, self.calling_ae))
            if ok:
                n = self.store.make_due(name)
                due += n
                if n:
                    log.info("destination %s answers C-ECHO again: %d pending deliver%s sent now", name, n,
                             "y is" if n == 1 else "ies are")
        return due

    def _fail(self, row: DeliveryRow, why: str, count: bool = True) -> None:
        self.store.delivery_failed(row.id, why, count_attempt=count)
        self.failed += 1
        log.error("delivery failed for good: destination=%s key=%s role=%s sop_instance_uid=%s reason=%s. Fix what "
                  "the reason names, then `edgeseg deliver --retry` sends it again.", row.destination, row.job_key,
                  row.role, row.sop_instance_uid, why)
