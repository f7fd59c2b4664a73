"""When an in-process robot swaps in the last round's models: before its round's first frame, every run.

The demos roll a round's promoted edge models out while the robots stream the next round. Left to the
clock, the frame at which a robot swapped was wherever its stream happened to be when the job reached
it (the canary's watch, the fleet phase and the T3 rollout after T4 all take wall time), so every upload
after it depended on thread timing: two runs of one seed had identical first rounds and different
uploads from the first frame of round 2 on, and a single-seed comparison of two versions of the code
measured mostly that.

A :class:`RolloutGate` holds each robot before the first frame of its round until every rollout of its
arm has ended (swapped in, rolled back by a watch, aborted at the canary, failed). The watches after the
swaps judge frames of the robots' :class:`~fleetloop_cloud.demo.watch_feed.WatchFeed` (the camera while
the robot waits), the same frames every run, so what each rollout ends with is the same every run too.
(Holding only until the new version served, as first built, left the watches to the clock: a watch saw
frames only if its robot's turn to stream came within its window.) The swap is still a hot swap on a
running robot (its serving stack, ring buffer and watch live); ROS robots (their own processes, on camera
time) have no gate and swap where the clock puts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from fleetloop_cloud.deploy import approved_edge_packages


class RolloutGate:
    """One arm's gate: :meth:`expect` before its rollouts start, :meth:`hold` before a robot's round."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: dict[str, threading.Event] = {}

    def expect(self, entries: Sequence[dict]) -> None:
        """Hold robots for the Approved edge packages among a round's registry ``entries``."""
        with self._lock:
            self._ended = {str(e["variant"]): threading.Event() for e in approved_edge_packages(entries)}

    def ended(self, tier: str) -> None:
        """The rollout of ``tier`` is over (whatever came of it): hold no robot for it any more."""
        with self._lock:
            event = self._ended.get(tier)
        if event is not None:
            event.set()

    def end_all(self) -> None:
        """Every rollout is over (also when one raised): hold nothing."""
        with self._lock:
            events = list(self._ended.values())
        for event in events:
            event.set()

    def hold(self) -> None:
        """Wait until every rollout :meth:`expect` named has ended."""
        with self._lock:
            waits = list(self._ended.values())
        for ended in waits:
            ended.wait()


def roll_out_in_background(
    gate: RolloutGate | None,
    run: Callable[[Callable[[dict], None]], list[dict]],
    entries: Sequence[dict],
    done: Callable[[list[dict]], None],
    name: str,
) -> threading.Thread:
    """Start ``run(on_record)`` (the rollouts of ``entries``, calling ``on_record`` with each tier's record as
    it ends) on a thread; ``done`` gets the records. The gate expects ``entries`` before the thread starts
    (before a robot can start its round) and holds nothing once the thread ends, however it ends."""
    if gate is not None:
        gate.expect(entries)

    def on_record(record: dict) -> None:
        if gate is not None:
            gate.ended(str(record.get("tier")))

    def work() -> None:
        try:
            done(run(on_record))
        finally:
            if gate is not None:
                gate.end_all()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread
