"""What an in-process robot's camera shows the watch after a swap while the robot waits for its round.

A robot in the field streams while the cloud rolls a model out, so the watch after each swap judges the
frames its camera brings. The demo's in-process robots stream one after another (an arm's robots in turn,
the arms in turn), so a watch saw frames only if its robot's turn came within the watch window: measured
on seed 0 (b91e8e5's gate), one round-1 T3 went to the loop's and the campaign arm's canaries; the loop's
canary streamed at once and was rolled back after 226 frames (confidence collapsed), the campaign's had
not streamed when its 5 s window ended and passed on 0 frames; the random arm's canary reached its
verdict 4.86 s into its 5 s window. The verdicts, and every round after them, hung on the machine's speed.

A :class:`WatchFeed` serves its robot frames of a camera stream of its own site while a watch runs and the
robot is not streaming: from the watch's first frame to its last (its ``window_frames``, or the frame a
limit is crossed). The stream is seeded by the robot and the role and starts anew for every watch, so
every model swapped into one role of one robot is judged on the same frames, in every run and every arm
(seeded by the job instead, the loop's and the campaign arm's canaries judged one T3 on different frames
and disagreed). Its frames go through the model manager (ring buffer, the served-before baselines, the watchdog) as a
stream of their own (``<stream>/watch``: the round's stream state is not touched) and not to the selector:
they are not uploaded. With the feed, a rollout ends as soon as its watches have seen
their frames, and :class:`~fleetloop_cloud.demo.rollout_gate.RolloutGate` starts a robot's round only after
every rollout of its arm ended, so no watch judges frames of a round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fleetloop_sim import sim

log = logging.getLogger(__name__)


def watch_frames(spec: Any, role: str) -> Iterator[Any]:
    """Return the frames every watch of ``role`` on robot ``spec`` judges, from the first: the same in every
    arm and run (a camera stream of the robot's site, seeded by the robot and the role)."""
    camera = sim.CameraStream(
        spec.site, f"{spec.robot_id}/watch/{role}", seed=spec.world_seed, start_ns=spec.start_ns, task=spec.task
    )
    while True:
        yield from camera.frames(1000)


class WatchFeed:
    """A thread that feeds ``manager`` frames of the robot's site while it watches a swap (``spec``: its robot)."""

    def __init__(self, spec: Any, manager: Any, recheck_s: float = 0.5):
        self.spec, self.manager, self.recheck_s = spec, manager, recheck_s
        self._turn = threading.Lock()  # held by the robot's own stream for its round
        self._stop = threading.Event()
        self._wake = threading.Event()  # a swap started a watch (or stop)
        manager.add_listener(lambda event: self._wake.set() if event.kind == "swapped" else None)
        self._thread: threading.Thread | None = None
        self.frames = 0  # frames fed, every watch together

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-feed-{self.spec.robot_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Feed nothing while the robot streams its round (a frame in flight finishes first)."""
        with self._turn:
            yield

    def _run(self) -> None:
        job, frames = None, iter(())
        while not self._stop.is_set():
            self._wake.wait(self.recheck_s)  # woken by a swap; the re-check is a safety net, not the mechanism
            self._wake.clear()
            while not self._stop.is_set():
                with self._turn:
                    watching = self.manager.status().watching
                    if watching is None:
                        break
                    if watching["job_id"] != job:
                        job, frames = watching["job_id"], watch_frames(self.spec, watching["role"])
                    frame = next(frames)
                    try:
                        self.manager.infer(frame.image, stream=f"{self.spec.stream}/watch")
                    except Exception:  # an inference error is counted by the watch (observe); the feed goes on
                        log.debug("watch feed frame failed", exc_info=True)
                    self.frames += 1
