"""Delivery of results to the configured destinations, from the job store's persistent outbox.

The watcher records what to send when it records a series ``done``/``partial`` (:meth:`JobStore.mark_done`, one
transaction); this worker thread sends what is due and records the outcome:

* sent and confirmed by the destination: ``sent``;
* a failure that may pass (connection refused, time-out, transient rejection, "out of resources"): tried again
  after ``retry_initial_s``, doubled at each failure up to ``retry_max_s``;
* a failure that will not pass (association rejected permanently, e.g. our AE title unknown to the PACS; the object
  refused), a destination no longer configured, a result file removed, or a delivery older than ``max_age_h``:
  ``failed``, logged as an error and listed by ``edgeseg status``; ``edgeseg deliver --retry`` makes them due again.
  A result with a failed delivery is not a success: ``on_settled`` (the watcher) marks its series partial with an
  error file beside it, and done again once a retry delivered everything.

A kill during a send leaves the row ``pending``: it is sent again after the restart with the same SOP Instance UID,
so the PACS keeps one copy. Files due for one destination go over one association.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Callable, Sequence

from edgeseg.runtime.node.settings import DeliverySettings, Destination
from edgeseg.runtime.watch.store import DeliveryRow, JobStore

log = logging.getLogger(__name__)

#: send_files(destination, files, calling_ae) -> outcomes (edgeseg.runtime.node.send.send_files)
Sender = Callable[..., list]


def backoff_s(attempts: int, settings: DeliverySettings) -> float:
    """Seconds before the next try after ``attempts`` failed tries (1, 2, ...)."""
    return float(min(settings.retry_max_s, settings.retry_initial_s * 2 ** max(0, attempts - 1)))


class DeliveryWorker:
    """Sends due deliveries until ``stop`` is set. ``wake()`` after new deliveries were recorded."""

    def __init__(self, store: JobStore, destinations: Sequence[Destination], settings: DeliverySettings,
                 calling_ae: str | None, stop: threading.Event, sender: Sender | None = None,
                 clock: Callable[[], float] = time.time,
                 on_settled: Callable[[str], None] | None = None) -> None:
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
            wait = 1.0
            try:
                nxt = self.store.next_delivery_at()
                if nxt is not None:
                    wait = max(0.05, min(wait, nxt - self.clock()))
            except Exception:  # noqa: BLE001
                pass
            self._wake.wait(wait)

    def deliver_due(self) -> bool:
        """One round: every due delivery, grouped by destination. True when something was attempted."""
        from edgeseg.runtime.node.send import default_calling_ae, send_files

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
        sender = self._sender or send_files
        for name, batch in by_destination.items():
            if self._stop.is_set():
                break
            destination = self.destinations[name]
            outcomes = sender(destination, [r.file for r in batch], default_calling_ae(destination, self.calling_ae))
            for row, outcome in zip(batch, outcomes):
                if outcome.ok or outcome.permanent:
                    settled.add(row.job_key)
                if outcome.ok:
                    self.store.delivery_sent(row.id)
                    self.sent += 1
                    log.info("result delivered: destination=%s key=%s role=%s sop_instance_uid=%s", name,
                             row.job_key, row.role, row.sop_instance_uid)
                elif outcome.permanent:
                    self._fail(row, outcome.message)
                else:
                    delay = backoff_s(row.attempts + 1, self.settings)
                    self.store.delivery_retry(row.id, self.clock() + delay, outcome.message)
                    log.warning("delivery will be retried: destination=%s key=%s role=%s in_s=%.0f attempt=%d "
                                "reason=%s", name, row.job_key, row.role, delay, row.attempts + 1, outcome.message)
        if self.on_settled is not None:
            for key in sorted(settled):
                self.on_settled(key)
        return True

    def _fail(self, row: DeliveryRow, why: str, count: bool = True) -> None:
        self.store.delivery_failed(row.id, why, count_attempt=count)
        self.failed += 1
        log.error("delivery failed for good: destination=%s key=%s role=%s sop_instance_uid=%s reason=%s. Fix what "
                  "the reason names, then `edgeseg deliver --retry` sends it again.", row.destination, row.job_key,
                  row.role, row.sop_instance_uid, why)
