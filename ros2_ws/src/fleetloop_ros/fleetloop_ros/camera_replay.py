"""A camera for bring-ups without one: publishes simulated or recorded frames as sensor_msgs/Image.

Sources (``fleetloop_ros.camera_frames``): ``sim`` (a seeded camera stream of the simulated world,
``fleetloop_sim.sim``) or a rosbag2 directory/file (sqlite3 or MCAP, read with ``rosbags``; its Image
and CompressedImage messages are republished). Frames are stamped with the wall clock when sent, so the perception
node's latency figure means something. On robots, ``ros2 bag play`` does the bag part
(``launch/replay.launch.py``).

The fleet simulation (``fleetloop demo``) uses the live-stream form: ``--robot`` and ``--seed``
name one robot's endless simulated stream, ``--start`` skips to a frame index (no pixels drawn
for the skipped ones), ``--sim-stamps`` stamps frames with the simulated capture time (so
upload budgets run on camera time, however fast the replay), and ``--lockstep TOPIC`` paces the
camera by the robot's answers on that results topic: the next frame leaves while fewer than
``--window`` frames are unanswered, and a frame unanswered for ``--answer-timeout`` seconds is
counted lost and frees its slot. So the camera runs as fast as the robot answers, and a lost frame
or a lost answer is measured, never waited for. An answer that still comes while the camera runs
turns its frame from lost into late (answered, after the deadline): a busy machine delays, a fault
loses, and the two are told apart. After its last frame the camera listens up to one more
``--answer-timeout`` for the answers to frames counted lost. At the end it prints one JSON line
(``{"camera": {"sent", "answered", "lost", "late"}}``) for whoever started it. SIGUSR1 ends a camera
the same way before its count (``--count 0``: until told): it sends no more frames and ends once those in
flight are answered or lost (SIGINT and SIGTERM stop it at once, its frames in flight unanswered).

``--wait-subscribers N`` holds the first frame until N readers matched (frames sent before
discovery are lost), for at most ``--wait-timeout`` seconds: then the camera exits with
``EXIT_NO_SUBSCRIBERS`` and an error naming the topic and what it saw.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import OrderedDict
from typing import Sequence

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from fleetloop_core.dds import TRANSPORTS, DdsConfig, environment_transport
from fleetloop_core.errors import ConfigError
from fleetloop_core.ros_convert import SEMI_PLANAR_ENCODINGS
from fleetloop_ros.camera_frames import FrameSource
from fleetloop_ros.messages import stamp_ns as message_stamp_ns

_SETTLE_S = 0.5
_EXPIRED_KEPT = 4096  # frames counted lost whose late answers are still recognised
EXIT_NO_SUBSCRIBERS = 2


class CameraReplayNode(Node):
    """Publishes frames on ``topic`` at ``rate_hz`` (``count`` frames, 0 = until stopped)."""

    def __init__(
        self,
        topic: str = "camera/image_raw",
        rate_hz: float = 10.0,
        count: int = 0,
        source: str = "sim",
        width: int = 128,
        height: int = 128,
        encoding: str = "rgb8",
        compressed: bool = False,
        reliable: bool = False,
        frame_id: str = "camera",
        site: int = 0,
        wait_subscribers: int = 0,
        node_name: str = "camera_replay",
        seed: int = 0,
        robot: str = "",
        start: int = 0,
        sim_stamps: bool = False,
        lockstep_topic: str = "",
        window: int = 4,
        answer_timeout_s: float = 2.0,
        wait_timeout_s: float = 60.0,
        progress_s: float = 0.0,
        **node_kwargs,
    ):
        # ~75 lines, a third of them the signature: every option of `fleetloop camera`
        super().__init__(node_name, **node_kwargs)
        if rate_hz <= 0:
            raise ConfigError(f"camera replay: rate_hz must be > 0 (got {rate_hz})")
        if window < 1:
            raise ConfigError(f"camera replay: window must be >= 1 (got {window})")
        if answer_timeout_s <= 0 or wait_timeout_s <= 0:
            raise ConfigError(
                f"camera replay: answer_timeout_s and wait_timeout_s must be > 0 "
                f"(got {answer_timeout_s}, {wait_timeout_s})"
            )
        self.count, self.sent = count, 0
        self._finishing = False  # finish(): no more frames; done once those in flight are answered or lost
        # lockstep: frames sent and not answered yet, stamp -> when sent (monotonic s), oldest first
        self._unanswered: OrderedDict[int, float] = OrderedDict()
        self.answered = 0
        self.lost = 0  # lockstep: frames unanswered for answer_timeout_s (and not answered since)
        self.late = 0  # lockstep: frames answered after answer_timeout_s (counted lost first)
        self._expired: OrderedDict[int, float] = OrderedDict()  # counted lost: stamp -> when (monotonic s)
        self.window = window
        self.answer_timeout_s = answer_timeout_s
        self._sim_stamps = sim_stamps
        self.wait_subscribers = wait_subscribers  # discovery takes a moment: frames sent before it are lost
        self.wait_timeout_s = wait_timeout_s
        self.failure = ""  # why the camera gave up (no subscribers in time)
        self._created = time.monotonic()
        self._matched_at: float | None = None
        self._said_waiting = False
        self.frame_id = frame_id
        # reliable: two seconds of history (at most 64 frames: Fast DDS preallocates it), so a reader that
        # stalls for a moment (a loaded machine) loses nothing
        # (lockstep keeps at most `window` frames in flight: 10 deep is enough)
        depth = 10 if lockstep_topic else min(64, max(10, math.ceil(2 * rate_hz)))
        qos = (
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)
            if reliable
            else qos_profile_sensor_data
        )
        # the live form: a robot's own stream, or its stamps, or answers to wait for
        live = bool(robot or start or sim_stamps or lockstep_topic)
        self._frames = FrameSource(source, count, width, height, encoding, compressed, site, seed, robot, start, live)
        kind = CompressedImage if self._frames.kind == "compressed" else Image
        self.publisher = self.create_publisher(kind, topic, qos)
        if lockstep_topic:
            self._results = self._subscribe_answers(lockstep_topic, window)
        self._lockstep = bool(lockstep_topic)
        self._timer = self.create_timer(1.0 / rate_hz, self._tick)
        if (
            progress_s > 0
        ):  # a line now (we are up) and then and then, so whoever started us can tell progress from a stall
            print(json.dumps({"camera_progress": self.counts()}), flush=True)
            self.create_timer(progress_s, lambda: print(json.dumps({"camera_progress": self.counts()}), flush=True))
        self.get_logger().info(
            f"camera replay: {source} -> {self.publisher.topic_name} at {rate_hz:g} Hz"
            + (f", {count} frames" if count else "")
        )

    def _subscribe_answers(self, topic: str, window: int):
        """Subscribe to the robot's FrameResult answers (lockstep: a frame goes out when one comes back)."""
        from fleetloop_interfaces.msg import FrameResult

        # transient-local like the perception node's results: an answer sent before the robot's writer
        # matched this new reader still arrives (volatile, such answers were lost and stalled the demo)
        results_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=max(32, 4 * window),
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        return self.create_subscription(FrameResult, topic, self._on_result, results_qos)

    def _tick(self) -> None:
        if self.failure:
            return
        if self.sent == 0 and self.wait_subscribers and not self._subscribers_ready():
            return
        if self._finishing or (self.count and self.sent >= self.count):
            if self._timer.is_canceled():
                return
            self._timer.cancel()
            self.get_logger().info(f"camera replay: sent {self.sent} frames")
            return
        if self._lockstep:
            self._expire_unanswered()
            if len(self._unanswered) >= self.window:
                return
        message = self._frames.next_message(time.time_ns(), self.frame_id, self._sim_stamps)
        self.publisher.publish(message)
        if self._lockstep:
            self._unanswered[message_stamp_ns(message.header.stamp)] = time.monotonic()
        self.sent += 1

    def _subscribers_ready(self) -> bool:
        """Return whether the first frame may go out: subscribers matched (and answering, in lockstep) and settled.

        Gives up (``self.failure``) after ``wait_timeout_s``.
        """
        # matched on our side is not yet matched on theirs: give the other end half a second more.
        # In lockstep the answers' topic must have a publisher too (answers before that would count as lost)
        matched = self.publisher.get_subscription_count()
        answering = not self._lockstep or self._results.get_publisher_count() >= 1
        if matched < self.wait_subscribers or not answering:
            self._matched_at = None
            if not self._said_waiting:
                self._said_waiting = True
                self.get_logger().info(
                    f"camera replay: waiting for {self.wait_subscribers} subscriber(s) on "
                    f"{self.publisher.topic_name} (up to {self.wait_timeout_s:g} s)"
                )
            if time.monotonic() - self._created > self.wait_timeout_s:
                self.failure = (
                    f"camera replay: no frame sent: {matched} of {self.wait_subscribers} subscriber(s) "
                    f"matched on {self.publisher.topic_name}"
                    + ("" if answering else f" and no publisher on {self._results.topic_name}")
                    + f" within {self.wait_timeout_s:g} s (is the robot up, on the same "
                    f"ROS_DOMAIN_ID and DDS transport, with a compatible QoS?)"
                )
                self.get_logger().error(self.failure)
            return False
        if self._matched_at is None:
            self._matched_at = time.monotonic()
        return time.monotonic() - self._matched_at >= _SETTLE_S

    def _expire_unanswered(self) -> None:
        """Count frames unanswered for answer_timeout_s as lost (their slot in the window is free again)."""
        horizon = time.monotonic() - self.answer_timeout_s
        while self._unanswered:
            stamp, sent_at = next(iter(self._unanswered.items()))
            if sent_at > horizon:
                break
            del self._unanswered[stamp]
            self.lost += 1
            self._expired[stamp] = time.monotonic()
            while len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)

    def _on_result(self, message) -> None:
        # only answers to frames we sent count, once each (transient-local also hands us the answers to an
        # earlier camera's last frames); a late answer to a frame already counted lost stays lost
        stamp = message_stamp_ns(message.header.stamp)
        if self._unanswered.pop(stamp, None) is None:
            if self._expired.pop(stamp, None) is not None:  # answered after its deadline: late, not lost
                self.lost -= 1
                self.late += 1
                self.answered += 1
            return
        self.answered += 1
        self._tick()  # lockstep: an answer frees a slot, send the next frame now

    @property
    def done(self) -> bool:
        """True once the camera gave up, or every frame was sent or it was told to :meth:`finish` (and, in
        lockstep, the frames sent are answered or counted lost)."""
        if self.failure:
            return True
        if not self._finishing and (not self.count or self.sent < self.count):
            return False
        if self._lockstep:
            self._expire_unanswered()
            if self._unanswered:
                return False
            # frames counted lost may still be answered late: listen one more deadline after the last expired
            last = next(reversed(self._expired.values()), None)
            return last is None or time.monotonic() - last >= self.answer_timeout_s
        return True

    def finish(self) -> None:
        """Send no more frames; :attr:`done` once those in flight are answered or counted lost."""
        self._finishing = True

    def counts(self) -> dict[str, int]:
        """Return frames sent, answered, lost and late (all but sent: lockstep only)."""
        return {"sent": self.sent, "answered": self.answered, "lost": self.lost, "late": self.late}


def register(subparsers) -> None:
    """Add ``fleetloop camera``: publish a simulated or recorded camera for a robot bring-up."""
    parser = subparsers.add_parser("camera", help="publish simulated or recorded camera frames (sensor_msgs/Image)")
    parser.add_argument("--source", default="sim", help="sim, or a rosbag2 path (sqlite3 or MCAP)")
    parser.add_argument("--topic", default="camera/image_raw")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--count", type=int, default=0, help="frames to send (0: until Ctrl-C, or SIGUSR1)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8", "mono8", *SEMI_PLANAR_ENCODINGS])
    parser.add_argument("--compressed", action="store_true", help="publish sensor_msgs/CompressedImage (jpeg)")
    parser.add_argument("--reliable", action="store_true", help="reliable QoS instead of sensor data")
    parser.add_argument("--site", type=int, default=0, help="simulated site index")
    parser.add_argument("--frame-id", default="camera", help="header frame_id of every frame")
    parser.add_argument(
        "--wait-subscribers", type=int, default=0, help="start sending once this many subscribers are matched"
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        help="give up (exit 2) when --wait-subscribers are not matched within this many seconds",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulated world seed")
    parser.add_argument("--robot", default="", help="simulated robot name (seeds its stream; live stream)")
    parser.add_argument("--start", type=int, default=0, help="first frame index of the live simulated stream")
    parser.add_argument("--sim-stamps", action="store_true", help="stamp frames with the simulated capture time")
    parser.add_argument(
        "--lockstep",
        default="",
        metavar="RESULTS_TOPIC",
        help="send only while fewer than --window frames are unanswered on this FrameResult topic",
    )
    parser.add_argument("--window", type=int, default=4, help="frames in flight in lockstep mode")
    parser.add_argument(
        "--answer-timeout",
        type=float,
        default=2.0,
        help="lockstep: a frame unanswered this many seconds is counted lost",
    )
    parser.add_argument(
        "--progress",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print a JSON progress line this often (0: only the final line)",
    )
    parser.add_argument(
        "--transport",
        choices=list(TRANSPORTS),
        default=None,
        help="DDS transport (as the robot's dds.transport); default: the environment's, else large_data",
    )
    parser.add_argument(
        "--no-type-propagation",
        action="store_true",
        help="do not announce XTypes type information (as the robot's dds.type_propagation: false)",
    )
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from fleetloop_ros.runner import run_nodes

    made: list[CameraReplayNode] = []

    def nodes() -> Sequence[Node]:
        made.append(
            CameraReplayNode(
                args.topic,
                args.rate,
                args.count,
                args.source,
                args.width,
                args.height,
                args.encoding,
                args.compressed,
                args.reliable,
                frame_id=args.frame_id,
                site=args.site,
                wait_subscribers=args.wait_subscribers,
                namespace=args.namespace,
                seed=args.seed,
                robot=args.robot,
                start=args.start,
                sim_stamps=args.sim_stamps,
                lockstep_topic=args.lockstep,
                window=args.window,
                answer_timeout_s=args.answer_timeout,
                wait_timeout_s=args.wait_timeout,
                progress_s=args.progress,
            )
        )
        return made

    finishing = threading.Event()  # SIGUSR1: end as at the end of the count (installed before the node exists)
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: finishing.set())

    def finished() -> bool:
        if made and finishing.is_set():
            made[0].finish()
        return bool(made) and made[0].done

    def report(_nodes, code: int) -> int:
        if made:
            # one machine-readable line for whoever started us (the fleet simulation counts drops)
            print(json.dumps({"camera": made[0].counts()}), flush=True)
            if made[0].failure:
                return EXIT_NO_SUBSCRIBERS
        return code

    dds = None
    if args.transport or args.no_type_propagation:
        dds = DdsConfig(
            transport=args.transport or environment_transport(), type_propagation=not args.no_type_propagation
        )
    # free-running reliable: a second after the last frame for its delivery; lockstep waited for the answers
    linger = 0.0 if args.lockstep else 1.0
    run_nodes(nodes, [], threads=1, until=finished, linger_s=linger, dds=dds, on_stopped=report)


def main(args: list[str] | None = None) -> int:
    """Console entry ``camera_replay``: simulated camera at 10 Hz on camera/image_raw."""
    from fleetloop_ros.runner import run_nodes

    run_nodes(lambda: [CameraReplayNode()], args, threads=1)
