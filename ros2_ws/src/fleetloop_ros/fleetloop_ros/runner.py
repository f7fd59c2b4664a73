"""Starting nodes in one process (console entry points, CLI).

The frame path (camera, perception, selector, uploader) spins on a single-threaded executor: measured
with Kilted's rclpy, its MultiThreadedExecutor re-submits a ready subscription until a worker takes
it and scans the growing list of futures on every turn, which cost ~30 ms of CPU per frame (35
frames/s through the graph instead of ~1,000). Nodes whose callbacks block on purpose (the model
manager's swap service waits for the job's outcome) declare ``blocking_callbacks = True`` and spin on
a small multi-threaded executor of their own, so frames keep flowing while a swap is waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from fleetloop_core.errors import FleetLoopError
from fleetloop_ros.environment import apply_robot_environment

log = logging.getLogger("fleetloop_ros")


def run_nodes(factory: Callable[[], Sequence[Node]], args: Sequence[str] | None = None,
              threads: int = 1, duration_s: float | None = None,
              on_ready: Callable[[Sequence[Node]], None] | None = None,
              until: Callable[[], bool] | None = None, linger_s: float = 0.0) -> int:
    """Create the nodes, spin them until shutdown (Ctrl-C, ``duration_s``, or ``until()`` then ``linger_s``
    more seconds), clean up; return an exit code.

    The DDS transport variables are set before the ROS context exists (they are read when the
    participant is created).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_robot_environment()
    rclpy.init(args=list(args) if args is not None else None)
    nodes: list[Node] = []
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    side: MultiThreadedExecutor | None = None          # nodes with blocking callbacks, in their own thread
    try:
        try:
            nodes = list(factory())
        except FleetLoopError as exc:
            log.error("%s", exc)
            return 1
        for node in nodes:
            if threads <= 1 and getattr(node, "blocking_callbacks", False):
                side = side or MultiThreadedExecutor(num_threads=2)
                side.add_node(node)
            else:
                executor.add_node(node)
        if side is not None:
            threading.Thread(target=_spin_quietly, args=(side,), name="blocking-callbacks", daemon=True).start()
        if on_ready is not None:
            on_ready(nodes)
        if duration_s is not None:
            timer = threading.Timer(duration_s, executor.shutdown)
            timer.daemon = True
            timer.start()
        try:
            if until is None:
                executor.spin()
            else:
                while rclpy.ok() and not until():
                    executor.spin_once(timeout_sec=0.1)
                end = time.monotonic() + linger_s
                while rclpy.ok() and time.monotonic() < end:
                    executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        for node in reversed(nodes):
            close = getattr(node, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # shutting down: report, go on closing the others
                    log.error("closing %s failed: %s", node.get_name(), exc)
        executor.shutdown()
        if side is not None:
            side.shutdown()
        if _destroy_nodes(nodes):
            rclpy.try_shutdown()


def _spin_quietly(executor: MultiThreadedExecutor) -> None:
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


_DESTROY_TIMEOUT_S = 5.0


def _destroy_nodes(nodes: Sequence[Node]) -> bool:
    """Destroy ``nodes``; return False when that did not finish within a few seconds.

    Measured: a camera process at exit sometimes stayed in ``Node.destroy_node`` for good (rclpy's
    ``destroy_when_not_in_use`` waiting on a handle; not root-caused). The process is about to end, so
    a hung destroy is logged and left behind instead of hanging whoever waits for the process.
    """
    def destroy() -> None:
        for node in reversed(nodes):
            node.destroy_node()

    worker = threading.Thread(target=destroy, name="destroy-nodes", daemon=True)
    worker.start()
    worker.join(_DESTROY_TIMEOUT_S)
    if worker.is_alive():
        global TEARDOWN_HUNG
        TEARDOWN_HUNG = True
        log.warning("destroying the nodes did not finish in %.0f s; leaving it to process exit", _DESTROY_TIMEOUT_S)
        return False
    return True


TEARDOWN_HUNG = False       # set when _destroy_nodes gave up: the caller should end the process with os._exit
