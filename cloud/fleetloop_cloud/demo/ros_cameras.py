"""The demo's ROS cameras: one ``fleetloop camera`` process per robot and stream, its output read as it comes.

A camera is reaped from its last output line (its counts), not from its teardown; one that makes no
progress for ``CAMERA_STALL_S`` is ended and the error says what it had done. A camera streaming until
told (``--count 0``) is told with SIGUSR1: it sends no more frames and ends as at the end of a count, once
the frames in flight are answered or lost (``fleetloop_ros.camera_replay``), so its counts measure every
frame it sent. :class:`~fleetloop_cloud.demo.ros_fleet.RosFleet` starts them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable

from fleetloop_cloud.demo.fleet import FleetError

log = logging.getLogger("fleetloop.demo")

CAMERA_STALL_S = 60.0  # a camera that prints no progress for this long is ended (it reports every 5 s)
CAMERA_REAP_S = 5.0  # after its final line, a camera gets this long to exit before it is killed


class CameraRun:
    """One ``fleetloop camera`` process: its output read as it comes, its end bounded."""

    def __init__(self, robot_id: str, command: list[str], env: dict[str, str]):
        self.robot_id = robot_id
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, start_new_session=True
        )
        self.progress: dict = {}
        self.up = False  # its first line came: the camera's node exists
        self.final: dict | None = None
        self.last_output = time.monotonic()
        self.stderr: list[str] = []
        self._lines = threading.Thread(target=self._read_stdout, daemon=True)
        self._errors = threading.Thread(target=self._read_stderr, daemon=True)
        self._lines.start()
        self._errors.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.last_output, self.up = time.monotonic(), True
            if line.startswith("{"):
                message = json.loads(line)
                if "camera" in message:
                    self.final = message["camera"]
                elif "camera_progress" in message:
                    self.progress = message["camera_progress"]

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            del self.stderr[:-40]

    def raise_if_stalled(self, robot_log: Callable[[], str]) -> None:
        """Raise FleetError (the camera ended) when it printed nothing for ``CAMERA_STALL_S``."""
        if time.monotonic() - self.last_output > CAMERA_STALL_S:
            self.kill()
            raise FleetError(
                f"{self.robot_id}: the camera made no progress for {CAMERA_STALL_S:.0f} s "
                f"(so far {self.progress or 'nothing sent'}); camera stderr:\n"
                f"{''.join(self.stderr)[-1500:]}\nrobot log tail:\n{robot_log()}"
            )

    def result(self, robot_log: Callable[[], str]) -> dict:
        """Return the camera's final counts; FleetError naming what happened when there are none."""
        while self.final is None and self.process.poll() is None:
            self.raise_if_stalled(robot_log)
            time.sleep(0.1)
        self._lines.join(CAMERA_REAP_S)  # the final line, if the process just ended
        try:
            self.process.wait(CAMERA_REAP_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s: the camera printed its counts but did not exit within %.0f s: killed", self.robot_id, CAMERA_REAP_S
            )
            self.kill()
        if self.final is None:
            raise FleetError(
                f"{self.robot_id}: the camera exited with {self.process.returncode} before reporting its "
                f"counts (so far {self.progress or 'nothing sent'}); camera stderr:\n"
                f"{''.join(self.stderr)[-1500:]}\nrobot log tail:\n{robot_log()}"
            )
        if self.process.returncode not in (0, None) and self.process.returncode != -signal.SIGKILL:
            raise FleetError(
                f"{self.robot_id}: the camera exited with {self.process.returncode} after {self.final}; "
                f"camera stderr:\n{''.join(self.stderr)[-1500:]}"
            )
        return self.final

    def finish(self, robot_log: Callable[[], str]) -> dict:
        """Tell a camera streaming until told (SIGUSR1: no more frames, it ends once those in flight are
        answered or lost); return its final counts (:meth:`result`). Told only once it printed its first
        line: its handler exists from then on (SIGUSR1 before it would end the process without counts)."""
        while not self.up and self.process.poll() is None:
            self.raise_if_stalled(robot_log)
            time.sleep(0.05)
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        return self.result(robot_log)

    def kill(self) -> None:
        """End the process group now (no-op once it exited)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
