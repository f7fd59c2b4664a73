"""The uploader node: drains the on-disk upload queue to the object store within the bandwidth cap.

The draining is ``fleetloop_core.uploader.Uploader`` on its own thread (frame object first,
sidecar last, idempotent keys, back-off while the store is unreachable). The node adds the
parameters (``queue.bandwidth_bytes_per_s`` and the back-off are live), a periodic reachability
probe of the store, and the diagnostics: queue depth and bytes, upload rate, store reachability.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from fleetloop_core.health import Check, RollingEvents, check
from fleetloop_core.store import StoreError, open_store
from fleetloop_core.upload_queue import UploadQueue
from fleetloop_core.uploader import Uploader
from fleetloop_ros.diagnostics import DiagnosticsPublisher
from fleetloop_ros.parameters import LiveParameters
from fleetloop_ros.settings import UPLOADER_READ_ONLY, UploaderSettings

PROBE_KEY = "fleetloop-reachability-probe"  # never written: a HEAD answered (404 included) means reachable


class UploaderNode(Node):
    """UploadQueue -> object store, with live bandwidth cap and diagnostics."""

    blocking_callbacks = True  # the store probe waits on the network (fleetloop_ros.runner)

    def __init__(
        self, node_name: str = "uploader", namespace: str = "", parameter_overrides: Sequence = (), **node_kwargs
    ):
        super().__init__(node_name, namespace=namespace, parameter_overrides=list(parameter_overrides), **node_kwargs)
        self.parameters = LiveParameters(
            self, UploaderSettings, UploaderSettings(), UPLOADER_READ_ONLY, apply=self._apply
        )
        settings = self.parameters.current
        self._health = settings.health
        self.queue = UploadQueue.from_config(settings.queue)
        self.store = open_store(settings.queue.store)
        self.uploader = Uploader(self.queue, self.store, settings.queue)
        self._uploads = RollingEvents(settings.health.window_s)
        self._uploaded_seen = self.queue.stats().uploaded_total
        self._reachable: bool | None = None
        self._last_contact = time.monotonic()
        self._last_probe_error = ""
        group = MutuallyExclusiveCallbackGroup()
        self._probe_timer = self.create_timer(settings.store_probe_s, self._probe, callback_group=group)
        # the first probe runs once spinning, not here: a store that never answers must not hold up the robot's
        # start (measured: an S3 endpoint that accepts and stays silent kept `robot up` away for a minute)
        self._first_probe = self.create_timer(0.1, self._probe_first, callback_group=group)
        self._diagnostics = DiagnosticsPublisher(
            self, self.checks, settings.robot_id, settings.health.period_s, MutuallyExclusiveCallbackGroup()
        )
        self.uploader.start()
        self.get_logger().info(
            f"uploader up: {settings.queue.directory} -> {self.store.uri} "
            f"(bandwidth cap {settings.queue.bandwidth_bytes_per_s or 'none'} B/s)"
        )

    def _apply(self, settings: UploaderSettings) -> None:
        # the uploader reads its config per record: bandwidth and back-off take effect at the next one
        self.uploader.config = settings.queue
        self._uploads.window_s = settings.health.window_s
        self._health = settings.health

    def _probe_first(self) -> None:
        self._first_probe.cancel()
        self._probe()

    def _probe(self) -> None:
        try:
            self.store.head(PROBE_KEY)
        except StoreError as exc:
            if self._reachable is not False:
                self.get_logger().warning(f"object store {self.store.uri} unreachable: {exc}")
            self._reachable, self._last_probe_error = False, str(exc)
            return
        if self._reachable is False:
            self.get_logger().info(f"object store {self.store.uri} reachable again")
        self._reachable, self._last_contact, self._last_probe_error = True, time.monotonic(), ""

    def checks(self) -> list[Check]:
        """Return the upload check: queue depth and bytes, upload rate, store reachability."""
        health = self._health
        stats = self.queue.stats()
        new = stats.uploaded_total - self._uploaded_seen
        if new > 0:
            self._uploads.add(count=new)
            self._uploaded_seen = stats.uploaded_total
            self._last_contact = time.monotonic()
        unreachable_s = 0.0 if self._reachable else time.monotonic() - self._last_contact
        fill = stats.bytes / stats.disk_cap_bytes if stats.disk_cap_bytes else 0.0
        upload = check(
            "upload",
            {
                "store_unreachable_s": (unreachable_s, health.store_unreachable_s),
                "queue_depth": (float(stats.records), health.queue_depth),
                "queue_fill": (fill, health.queue_fill),
            },
            {
                "store": self.store.uri,
                "store_reachable": self._reachable if self._reachable is not None else "unknown",
                "store_error": self._last_probe_error or (stats.last_error or ""),
                "uploads_per_s": self._uploads.per_second(),
                "uploaded_total": stats.uploaded_total,
                "queue_depth": stats.records,
                "queue_bytes": stats.bytes,
                "in_flight": stats.in_flight,
                "corrupt": stats.corrupt,
                "bandwidth_cap_bytes_per_s": self.uploader.config.bandwidth_bytes_per_s or math.inf,
            },
        )
        return [upload]

    def close(self) -> None:
        """Stop the upload thread (the record in flight finishes) and close the queue."""
        self.uploader.stop()
        self.queue.close()


def main(args: list[str] | None = None) -> int:
    """Run the uploader node alone."""
    from fleetloop_ros.runner import run_nodes

    return run_nodes(lambda: [UploaderNode()], args)
