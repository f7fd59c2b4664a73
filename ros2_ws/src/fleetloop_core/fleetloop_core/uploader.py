"""The uploader: moves records from the upload queue to the object store, politely.

Frame object first, sidecar last (the cloud treats the sidecar as the commit marker), then the
record is forgotten. A bandwidth cap (bytes/s); exponential back-off with jitter while the store is
unreachable; a store that refuses the credentials stops the drain with a clear error and leaves
every record queued.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field


from fleetloop_core.store import ObjectStore, StoreError, StoreUnavailable

from fleetloop_core.upload_queue import BackoffConfig, CorruptRecord, QueueConfig, QueuedRecord, UploadQueue

log = logging.getLogger(__name__)


def backoff_delay(failures: int, config: BackoffConfig, rng: random.Random) -> float:
    """Return seconds to wait after ``failures`` consecutive failures (>= 1): capped exponential, jittered."""
    base = min(config.max_s, config.initial_s * config.multiplier ** max(failures - 1, 0))
    return base * (1.0 - config.jitter * rng.random())


@dataclass
class DrainReport:
    """What one drain did."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    failures: int = 0  # failed attempts (store unreachable or refusing)
    corrupt: int = 0
    backoff_s: list[float] = field(default_factory=list)
    error: str | None = None  # set when the store refused (credentials, permissions)
    seconds: float = 0.0


class Uploader:
    """Moves records from a queue to a store: frame object first, sidecar last, then forgets them."""

    def __init__(
        self,
        queue: UploadQueue,
        store: ObjectStore,
        config: QueueConfig | None = None,
        rng: random.Random | None = None,
    ):
        self.queue, self.store = queue, store
        self.config = config or QueueConfig()
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self.last_report: DrainReport | None = None
        self.recovered = queue.recover(self.config.orphan_grace_s)

    # ------------------------------------------------------------------ one record
    def upload(self, record: QueuedRecord) -> None:
        """Upload one claimed record (frame, then sidecar); CorruptRecord if its file is damaged."""
        metadata = {"robot-id": record.robot_id, "stream": record.stream}
        if not record.frame_uploaded:
            try:
                data = record.blob.read_bytes()
            except FileNotFoundError:
                raise CorruptRecord(
                    f"{self.queue.directory}: frame file {record.blob.name} of {record.frame_key} is missing"
                ) from None
            if hashlib.sha256(data).hexdigest() != record.frame_sha256:
                raise CorruptRecord(
                    f"{self.queue.directory}: frame file {record.blob.name} of {record.frame_key} "
                    "does not match its sha256"
                )
            self._throttle(len(data) + len(record.sidecar))
            self.store.put_bytes(record.frame_key, data, metadata)
            self.queue.mark_frame_uploaded(record.id)
        self.store.put_bytes(record.sidecar_key, record.sidecar, metadata)

    def _throttle(self, size: int) -> None:
        """Wait until ``size`` bytes fit the bandwidth cap (a token bucket of one second, starting empty)."""
        rate = self.config.bandwidth_bytes_per_s
        if rate <= 0:
            return
        now = time.monotonic()
        capacity = max(rate, float(size))  # one second of burst, at least one record
        self._tokens = min(capacity, self._tokens + max(now - self._tokens_at, 0.0) * rate) - size
        self._tokens_at = now
        if self._tokens < 0:
            wait = -self._tokens / rate
            self._stop.wait(wait)
            self._tokens, self._tokens_at = 0.0, now + wait  # the wait paid the debt

    # ------------------------------------------------------------------ loops
    def drain(
        self,
        max_records: int | None = None,
        deadline_s: float | None = None,
        forever: bool = False,
        stop_on_refusal: bool = True,
    ) -> DrainReport:
        """Upload until the queue is empty (or ``max_records``, the deadline, :meth:`stop`); return a report.

        While the store is unreachable the drain backs off (exponential, jittered) and retries;
        with ``forever`` it then waits for new records. A refusal (credentials, permissions) ends
        the drain with ``report.error`` unless ``stop_on_refusal`` is False (then it backs off at
        the maximum delay and keeps trying: a fixed credential file brings it back).
        """
        report = DrainReport()
        start = time.monotonic()
        failures = 0
        outage_logged = False
        while not self._stop.is_set():
            if max_records is not None and report.uploaded >= max_records:
                break
            if deadline_s is not None and time.monotonic() - start >= deadline_s:
                break
            record = self.queue.claim()
            if record is None:
                if forever:
                    self._stop.wait(self.config.idle_poll_s)
                    continue
                break
            outcome, problem = self._attempt(record, report)
            if outcome == "unavailable":
                failures += 1
                if not outage_logged:
                    log.warning("store unreachable, backing off: %s", problem)
                    outage_logged = True
                delay = backoff_delay(failures, self.config.backoff, self._rng)
                report.backoff_s.append(delay)
                self._stop.wait(delay)
            elif outcome == "refused":
                if stop_on_refusal:
                    break
                log.error("store refused the upload, retrying in %.0f s: %s", self.config.backoff.max_s, problem)
                report.backoff_s.append(self.config.backoff.max_s)
                self._stop.wait(self.config.backoff.max_s)
            elif outcome == "uploaded":
                if outage_logged:
                    log.info("store reachable again after %d failed attempts", failures)
                failures, outage_logged = 0, False
        report.seconds = time.monotonic() - start
        self.last_report = report
        return report

    def _attempt(self, record: QueuedRecord, report: DrainReport) -> tuple[str, Exception | None]:
        """Upload one claimed record and count it; return (outcome, the store's error).

        Outcomes: ``uploaded`` (gone from the queue), ``corrupt`` (set aside), ``unavailable`` or
        ``refused`` (released: it stays queued for the next attempt).
        """
        try:
            self.upload(record)
        except CorruptRecord as exc:
            self.queue.mark_corrupt(record.id, str(exc))
            report.corrupt += 1
            log.error("%s", exc)
            return "corrupt", exc
        except StoreUnavailable as exc:
            self.queue.release(record.id, str(exc))
            report.failures += 1
            return "unavailable", exc
        except StoreError as exc:
            self.queue.release(record.id, str(exc))
            report.failures += 1
            report.error = str(exc)
            return "refused", exc
        except BaseException:
            self.queue.release(record.id, "interrupted")
            raise
        self.queue.complete(record.id)
        report.uploaded += 1
        report.uploaded_bytes += record.size_bytes
        return "uploaded", None

    def start(self) -> None:
        """Drain in a background thread until :meth:`stop` (refusals back off instead of ending it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.drain,
            kwargs={"forever": True, "stop_on_refusal": False},
            name="fleetloop-uploader",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background drain (waits for the record in flight, at most ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
