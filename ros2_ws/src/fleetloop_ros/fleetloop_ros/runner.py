"""Running nodes as a process that always ends: spin, stop on a signal, close our state, exit.

:func:`run_nodes` owns the process it runs in: it sets the DDS environment, initialises rclpy,
spins the nodes, and when asked to stop (SIGINT, SIGTERM, ``duration_s``, ``until()``) first
closes what holds our state (upload queue, uploader, deploy agent, model manager), then tears
rclpy down (nodes, context: the DDS participant says goodbye to its peers) and ends the process
with ``os._exit``, never through the interpreter's own finalisation.

The teardown is attempted, not waited on. Measured here, a finished camera process stayed in
``Node.destroy_node`` for good (twice in ``make demo``, py-spy: the destroying thread inside
rclpy's ``destroy_when_not_in_use``, the GIL held), and Fast DDS entity teardown with its TCP
(LARGE_DATA) transport has known hangs (eProsima/Fast-DDS#4203, #2010). Skipping the teardown is
no cure either: measured with ``LARGE_DATA``, peers of a process that vanished without it failed
to discover a new robot in 3 of 70 starts (0 of 40 when processes said goodbye) -- stale TCP
channels, fixed upstream in Fast DDS 3.2.5 ("Remove stale TCP channels", #6421; these wheels
carry 3.2.3). So the teardown runs under the shutdown deadline.

Three guards make "always ends" hold (docs/ros_robustness.md):

* Shutdown deadline: from the moment a stop is asked for, closing our state gets
  ``SHUTDOWN_BUDGET_S``; at ``SHUTDOWN_DEADLINE_S`` the kernel ends the process (``SIGALRM`` from
  ``setitimer``, default action: no Python, no GIL needed), a moment after ``faulthandler`` wrote
  every thread's stack to stderr. Such an exit shows as status -14 (SIGALRM): the state was closed,
  the rclpy/DDS teardown hung.
* Freeze watchdog: the frame-path executor beats after every turn (:class:`Liveness`); a watchdog
  thread marks the nodes' diagnostics ERROR after ``health.frame_deadline_s`` without a beat, logs
  once, and ends the process with ``EXIT_FROZEN`` after ``health.frozen_exit_s`` (so ``ros2
  launch respawn`` or systemd restarts it). The watchdog re-arms the native timer every tick, so a
  process whose GIL is held forever inside a C extension also ends, at ``frozen_exit_s + 5`` s.
* Signals are ours: rclpy's handlers are not installed (``SignalHandlerOptions.NO``); SIGINT and
  SIGTERM set the stop and arm the deadline; a second one ends the process at once.

The frame path (camera, perception, selector, uploader) spins on a single-threaded executor:
measured with Kilted's rclpy, its MultiThreadedExecutor cost ~30 ms of CPU per frame (35 frames/s
through the graph instead of ~1,000). Nodes whose callbacks block on purpose (the model manager's
swap service waits for the job's outcome) declare ``blocking_callbacks = True`` and spin on a small
multi-threaded executor of their own, in a thread of their own; no executor is shared by threads.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, NoReturn, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from fleetloop_core.dds import PROFILES_VARIABLE, TRANSPORT_VARIABLE, DdsConfig, dds_environment
from fleetloop_core.dds_shm import remove_orphaned_segments
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.health import HealthConfig
from fleetloop_core.stream_health import Liveness

log = logging.getLogger("fleetloop_ros")

EXIT_OK = 0
EXIT_ERROR = 1  # start-up failed (configuration, models)
EXIT_FROZEN = 3  # the watchdog ended a frozen process
EXIT_TEARDOWN_HUNG = -signal.SIGALRM  # Popen.returncode of a process the shutdown deadline ended
SHUTDOWN_BUDGET_S = 3.0  # closing our nodes' state after a stop was asked for
SHUTDOWN_DEADLINE_S = 4.5  # the kernel ends the process here (SIGALRM), whatever it is doing
_TURN_S = 0.1  # longest wait of one executor turn: how soon a stop is noticed
_WATCH_PERIOD_S = 0.5
_NATIVE_MARGIN_S = 5.0


class _Stop(BaseException):
    """Raised by the signal handler while nodes are still being created (model loading can take long)."""


class ProcessRun:
    """The state of one :func:`run_nodes` process: stop request, liveness, exit code."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reason = ""
        self.liveness = Liveness()
        self.spinning = False
        self.side_spinners: list[threading.Thread] = []  # threads spinning the nodes with blocking callbacks
        self._native_lock = threading.Lock()
        self._shutting_down = False

    def request_stop(self, reason: str) -> None:
        """Ask the process to stop (idempotent); the shutdown deadline starts now."""
        if self.stop.is_set():
            return
        self.reason = reason
        self.stop.set()
        self.arm_shutdown_deadline()

    def arm_shutdown_deadline(self) -> None:
        """Start the kernel deadline (once: a later call keeps the first deadline)."""
        with self._native_lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            faulthandler.dump_traceback_later(SHUTDOWN_DEADLINE_S - 0.3, exit=False)  # where it hung, if it does
            if threading.current_thread() is threading.main_thread():  # (signal.signal: main thread only)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, SHUTDOWN_DEADLINE_S)

    def arm_freeze_deadline(self, seconds: float) -> None:
        with self._native_lock:
            if not self._shutting_down:
                faulthandler.dump_traceback_later(seconds, exit=True)


def run_nodes(
    factory: Callable[[], Sequence[Node]],
    args: Sequence[str] | None = None,
    threads: int = 1,
    duration_s: float | None = None,
    on_ready: Callable[[Sequence[Node]], None] | None = None,
    until: Callable[[], bool] | None = None,
    linger_s: float = 0.0,
    dds: DdsConfig | None = None,
    health: HealthConfig | None = None,
    on_stopped: Callable[[Sequence[Node], int], int] | None = None,
) -> NoReturn:
    """Create the nodes, spin them until asked to stop, close them, and end the process.

    Stops on SIGINT/SIGTERM, after ``duration_s``, or once ``until()`` is true plus ``linger_s``.
    ``dds`` sets the Fast DDS environment before rclpy exists (None: keep what the environment
    says, the default DdsConfig when it says nothing). ``health`` sets the freeze deadlines (None:
    the first node's own ``parameters.current.health``, else the defaults). ``on_stopped(nodes, code)`` runs after the
    nodes are closed and returns the exit code (a camera prints its counts there).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = ProcessRun()
    _install_signal_handlers(run)
    if dds is not None:
        dds_environment(dds, os.environ)
    elif TRANSPORT_VARIABLE not in os.environ and PROFILES_VARIABLE not in os.environ:
        dds_environment(DdsConfig(), os.environ)  # the robot's default transport
    remove_orphaned_segments()  # what processes that ended without destroying their participant left in /dev/shm
    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[Node] = []
    code = EXIT_OK
    try:
        nodes = _made(factory)
        executor = _executor_for(nodes, threads, run)
        if on_ready is not None:
            on_ready(nodes)
        watchdog = threading.Thread(
            target=_watch, args=(run, nodes, health or _health_of(nodes)), name="freeze-watchdog", daemon=True
        )
        watchdog.start()
        _spin(executor, run, duration_s, until, linger_s)
    except _Stop:
        pass
    except Exception:  # a callback or a node's start-up raised: say so, close what is open, exit non-zero
        log.exception("the nodes failed")
        code = EXIT_ERROR
    if not run.stop.is_set():
        run.request_stop("finished")
    log.info("stopping (%s)", run.reason)
    _close(nodes, time.monotonic() + SHUTDOWN_BUDGET_S)
    if on_stopped is not None:
        code = on_stopped(nodes, code)
    _leave_spin(run)
    _teardown(nodes)
    _end(code)


def _made(factory: Callable[[], Sequence[Node]]) -> list[Node]:
    """Return the factory's nodes; a refused configuration is said and ends the process, after the context's
    teardown: the participant leaves with it (a node half made is the context's to destroy; ended without it,
    a refused start left its 9 MB segment in /dev/shm until the next process started)."""
    try:
        return list(factory())
    except FleetLoopError as exc:
        log.error("%s", exc)
        _teardown([])
        _end(EXIT_ERROR)


def _executor_for(nodes: Sequence[Node], threads: int, run: ProcessRun):
    """Return the executor the frame path spins on; nodes with blocking callbacks spin beside it, in their thread."""
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    side: MultiThreadedExecutor | None = None
    for node in nodes:
        if getattr(node, "liveness", False) is None:
            node.liveness = run.liveness
        if threads <= 1 and getattr(node, "blocking_callbacks", False):
            side = side or MultiThreadedExecutor(num_threads=2)
            side.add_node(node)
        else:
            executor.add_node(node)
    if side is not None:
        spinner = threading.Thread(target=_spin_side, args=(side, run), name="blocking-callbacks", daemon=True)
        run.side_spinners.append(spinner)
        spinner.start()
    return executor


def _spin(
    executor, run: ProcessRun, duration_s: float | None, until: Callable[[], bool] | None, linger_s: float
) -> None:
    end = time.monotonic() + duration_s if duration_s is not None else None
    linger_until: float | None = None
    run.liveness.beat()  # start-up (loading models) is not a stall of the frame path
    run.spinning = True
    try:
        while not run.stop.is_set():
            executor.spin_once(timeout_sec=_TURN_S)
            run.liveness.beat()
            now = time.monotonic()
            if end is not None and now >= end:
                run.request_stop(f"--duration {duration_s:g} s elapsed")
            elif until is not None and linger_until is None and until():
                linger_until = now + linger_s
            if linger_until is not None and now >= linger_until:
                run.request_stop("done")
    except ExternalShutdownException:
        run.request_stop("rclpy context shut down")
    finally:
        run.spinning = False


def _spin_side(executor: MultiThreadedExecutor, run: ProcessRun) -> None:
    try:
        while not run.stop.is_set():
            executor.spin_once(timeout_sec=_TURN_S)
    except ExternalShutdownException:
        pass
    except Exception:  # a blocking callback that raised: report, stop the process (a robot must not limp on)
        log.exception("a node with blocking callbacks failed")
        run.request_stop("a blocking callback raised")


def _install_signal_handlers(run: ProcessRun) -> None:
    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if run.stop.is_set():
            log.warning("%s again while stopping: ending now", name)
            _end(128 + signum)
        run.request_stop(name)
        if not run.spinning and threading.current_thread() is threading.main_thread():
            raise _Stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    # Python runs ``handler`` only when the main thread is back in Python. A main thread stuck in a C
    # call that signals do not end (a DDS wait on an overloaded machine; start-up included) would
    # never stop. CPython's C-level handler also writes the signal number to the wakeup fd at once:
    # a thread reading it arms the kernel deadline, whatever the main thread is doing.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the deadline's SIGALRM ends the process
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch_signals, args=(read_end, run), name="signal-watch", daemon=True).start()


def _watch_signals(read_end: int, run: ProcessRun) -> None:
    """Arm the shutdown deadline as soon as SIGINT/SIGTERM arrives (the main thread may be stuck)."""
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        if any(number in (signal.SIGINT, signal.SIGTERM) for number in data):
            run.arm_shutdown_deadline()


def _watch(run: ProcessRun, nodes: Sequence[Node], health: HealthConfig) -> None:
    """Mark a frozen frame path (diagnostics ERROR, logged once) and end the process when it stays frozen."""
    reported = False
    native_s = (health.frozen_exit_s or health.frame_deadline_s * 10) + _NATIVE_MARGIN_S
    while not run.stop.wait(_WATCH_PERIOD_S):
        run.arm_freeze_deadline(native_s)  # not re-armed while this thread cannot run: the C timer ends it
        if not run.spinning:
            continue
        stalled = run.liveness.stalled_s()
        if stalled >= health.frame_deadline_s and not reported:
            reported = True
            log.error(
                "frozen: the frame path has not answered for %.1f s (deadline %g s); stacks follow",
                stalled,
                health.frame_deadline_s,
            )
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            for node in nodes:
                publish = getattr(node, "publish_diagnostics", None)
                if publish is not None:
                    try:
                        publish()
                    except Exception as exc:  # reporting must not stop the watchdog
                        log.error("publishing diagnostics of %s failed: %s", node.get_name(), exc)
        elif stalled < health.frame_deadline_s and reported:
            reported = False
            log.warning("the frame path answers again (the longest stall was %.1f s)", run.liveness.longest_s)
        if health.frozen_exit_s and stalled >= health.frozen_exit_s:
            log.critical(
                "frozen for %.1f s (frozen_exit_s %g): exiting with code %d so that a supervisor restarts the process",
                stalled,
                health.frozen_exit_s,
                EXIT_FROZEN,
            )
            _end(EXIT_FROZEN)


def _close(nodes: Sequence[Node], deadline: float) -> None:
    """Close the nodes' own state (queue, uploader, agent) in reverse order, within ``deadline``.

    Closing runs in a thread so that one slow close (an upload in flight, a swap warming up) cannot
    keep the process: what is not closed by the deadline is left (every store we write is
    transactional: SQLite queue, atomic package installs).
    """

    def close_all() -> None:
        for node in reversed(nodes):
            close = getattr(node, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # shutting down: report, go on closing the others
                log.error("closing %s failed: %s", node.get_name(), exc)

    worker = threading.Thread(target=close_all, name="close-nodes", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        log.warning("closing the nodes did not finish within %.1f s; exiting without it", SHUTDOWN_BUDGET_S)


def _leave_spin(run: ProcessRun, turns: int = 5) -> None:
    """Let the side executor's thread see the stop and leave its wait before the nodes are destroyed.

    A node destroyed while an executor waits on it is not destroyed: rclpy defers it until the
    executor lets go, and the process ends with ``os._exit`` first, leaving the participant's 9 MB
    segment in /dev/shm (measured: 8 of 16 robot stops by SIGINT before this wait, 0 of 16 with it;
    tests/ros/test_shm_segments.py).
    The thread leaves within one turn (``_TURN_S``) of the stop; a blocking callback still running
    keeps it (then its node stays in use whatever we wait), so the wait is bounded by a few turns.
    """
    for spinner in run.side_spinners:
        spinner.join(turns * _TURN_S)


def _teardown(nodes: Sequence[Node]) -> None:
    """Destroy the nodes and the rclpy context (the participant leaves the graph); the deadline bounds it.

    The executors are not shut down: Kilted's ``MultiThreadedExecutor.shutdown`` joins its thread
    pool whatever ``timeout_sec`` says, i.e. waits for a blocking callback (a swap waiting for its
    shadow frames) to end (measured: the shutdown deadline ended such a robot with its stack in
    ``ThreadPoolExecutor.shutdown``). A callback still running keeps its entities; rclpy destroys
    them when it lets go, or the process ends first.
    """
    try:
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
        rclpy.get_default_context().destroy()
    except Exception as exc:  # the process ends next either way; say what failed
        log.warning("rclpy teardown failed: %s", exc)


def _end(code: int) -> NoReturn:
    """End the process now with ``code``: logs flushed, no interpreter finalisation (rclpy's destructors)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _health_of(nodes: Sequence[Node]) -> HealthConfig:
    for node in nodes:
        parameters = getattr(node, "parameters", None)
        health = getattr(getattr(parameters, "current", None), "health", None)
        if isinstance(health, HealthConfig):
            return health
    return HealthConfig()
