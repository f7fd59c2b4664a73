"""Replay recorded rosbag2 files through the real cascade and selector to tune selection offline.

``fleetloop replay BAG --sweep policy.params.threshold=0.3,0.5,0.7`` reads every
``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` of a bag (sqlite3 or MCAP storage,
through the ``rosbags`` library, no ROS needed), runs each frame once through the cascade
(T4, escalating to T3) and offers the result to one selector per swept setting and robot. The
budgets refill by the frames' stamps, so a bag replayed faster than real time spends exactly
the budget its recorded duration would have. Per setting it reports frames kept, kept per
hour, bytes per hour, the kept-class histogram, mean score of kept versus dropped frames,
duplicates removed and random samples, and writes a CSV and PNG plots.

Bad input is reported, not fatal: an unknown image encoding is counted per encoding, a
truncated or corrupt message is reported with its topic and message index and skipped, and a
bag that stops being readable mid-way ends the replay with what was read so far.

Robots and streams come from topic names: ``/<robot>/<stream...>`` (e.g.
``/robot_0/front/image_raw`` is robot ``robot_0``, stream ``front/image_raw``); a topic with
a single level belongs to robot ``robot``.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import yaml

from fleetloop_core.errors import ConfigError, FleetLoopError, InputError
from fleetloop_core.ros_convert import (
    UnsupportedEncoding,
    array_to_image,
    compressed_to_rgb8,
    image_to_rgb8,
    rgb8_to_compressed,
)
from fleetloop_core.selection import SelectionConfig, Selector, apply_changes

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)


class ReplayError(FleetLoopError):
    """A bag cannot be opened or holds no image topics (message names the path)."""


# --------------------------------------------------------------------------- reading bags


@dataclass(frozen=True)
class BagFrame:
    """One decoded image message: uint8 RGB frame, stamp (ns), where it came from."""

    topic: str
    index: int  # message index within its topic, from 0
    stamp_ns: int
    image: np.ndarray
    robot_id: str
    stream: str
    encoded_bytes: int  # size of the message's image data as recorded


@dataclass(frozen=True)
class BagProblem:
    """A message (or the rest of the bag) that could not be used, and why."""

    topic: str
    index: int
    kind: str  # unknown_encoding | corrupt | read_error | unreadable_bag
    detail: str

    def __str__(self) -> str:
        return f"{self.topic} message {self.index}: {self.kind}: {self.detail}"


def robot_and_stream(topic: str) -> tuple[str, str]:
    """Return (robot id, stream) of a topic: ``/robot_0/front/image_raw`` -> (robot_0, front/image_raw)."""
    parts = [p for p in topic.split("/") if p]
    if len(parts) < 2:
        return "robot", "/".join(parts) or "camera"
    return parts[0], "/".join(parts[1:])


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _stamp(msg: Any, log_time_ns: int) -> int:
    header = getattr(msg, "header", None)
    if header is not None:
        stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        if stamp > 0:
            return stamp
    return int(log_time_ns)


class BagReader:
    """Image messages of one rosbag2 (directory or single .mcap/.db3 file), as frames or problems.

    A context manager; :meth:`frames` yields :class:`BagFrame` and :class:`BagProblem` in log
    order. ``message_count`` is the number of image messages the bag announces.
    """

    def __init__(self, path: str | Path, topics: Sequence[str] | None = None):
        self.path = Path(path)
        self.topics = list(topics) if topics else None
        self._reader = None
        self.connections: list = []
        self.message_count = 0
        self.duration_s = 0.0
        self.skipped_topics: dict[str, str] = {}

    def __enter__(self) -> "BagReader":
        from rosbags.highlevel import AnyReader

        if not self.path.exists():
            raise ReplayError(f"{self.path}: no such bag")
        try:
            reader = AnyReader([self.path], default_typestore=_typestore())
            reader.open()
        except Exception as exc:  # rosbags raises its own error family and OSError/KeyError for damage
            raise ReplayError(
                f"{self.path}: cannot open the bag ({type(exc).__name__}: {exc}); a recording cut "
                "short has no index: `ros2 bag reindex` or `mcap recover` can rebuild it"
            ) from exc
        self._reader = reader
        for connection in reader.connections:
            if connection.msgtype in IMAGE_TYPES and (self.topics is None or connection.topic in self.topics):
                self.connections.append(connection)
            else:
                self.skipped_topics[connection.topic] = connection.msgtype
        if not self.connections:
            found = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
            self.close()
            raise ReplayError(
                f"{self.path}: no sensor_msgs Image/CompressedImage topics"
                f"{' among ' + str(self.topics) if self.topics else ''} (topics: {found})"
            )
        self.message_count = sum(c.msgcount for c in self.connections)
        self.duration_s = max(reader.duration, 0) / 1e9
        return self

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[BagFrame | BagProblem]:
        """Yield each image message decoded, or the problem that kept it from being decoded."""
        reader = self._reader
        if reader is None:
            raise ReplayError(f"{self.path}: bag is not open (use `with BagReader(...)`)")
        counters: Counter[str] = Counter()
        iterator = reader.messages(connections=self.connections)
        last_topic = self.connections[0].topic
        while True:
            try:
                connection, log_time, raw = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a damaged chunk or page: nothing after it can be trusted
                yield BagProblem(
                    last_topic,
                    counters[last_topic],
                    "read_error",
                    f"bag unreadable after this point ({type(exc).__name__}: {exc})",
                )
                return
            topic = last_topic = connection.topic
            index = counters[topic]
            counters[topic] += 1
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # truncated or corrupt CDR
                yield BagProblem(
                    topic,
                    index,
                    "corrupt",
                    f"cannot deserialize {connection.msgtype} ({len(raw)} bytes): {type(exc).__name__}: {exc}",
                )
                continue
            try:
                if connection.msgtype == COMPRESSED:
                    image = compressed_to_rgb8(msg.format, msg.data)
                else:
                    image = image_to_rgb8(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
            except UnsupportedEncoding:
                yield BagProblem(topic, index, "unknown_encoding", str(msg.encoding))
                continue
            except InputError as exc:
                yield BagProblem(topic, index, "corrupt", str(exc))
                continue
            robot, stream = robot_and_stream(topic)
            yield BagFrame(
                topic=topic,
                index=index,
                stamp_ns=_stamp(msg, log_time),
                image=image,
                robot_id=robot,
                stream=stream,
                encoded_bytes=len(msg.data),
            )


# --------------------------------------------------------------------------- writing bags


def write_image_bag(
    path: str | Path, messages: Iterable[tuple[str, int, Any]], storage: str = "mcap", compressed_format: str = "jpeg"
) -> int:
    """Write a rosbag2 at ``path`` (must not exist); return the number of messages written.

    ``messages`` yields (topic, stamp_ns, payload) where payload is a uint8 RGB array (written
    as rgb8 Image, or as CompressedImage when the topic ends in ``/compressed``), an
    ``ImageFields`` from :func:`fleetloop_core.ros_convert.array_to_image` (any encoding), or raw
    ``bytes`` written as they are (to make corrupt messages for tests).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ReplayError(f"unknown bag storage {storage!r} (known: {', '.join(plugins)})")
    typestore = _typestore()
    Image, CompressedImage = typestore.types[IMAGE], typestore.types[COMPRESSED]
    Header, Time = typestore.types["std_msgs/msg/Header"], typestore.types["builtin_interfaces/msg/Time"]
    connections: dict[str, Any] = {}
    count = 0
    with Writer(Path(path), version=9, storage_plugin=plugins[storage]) as writer:
        for topic, stamp_ns, payload in messages:
            compressed = topic.endswith("/compressed")
            msgtype = COMPRESSED if compressed else IMAGE
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            header = Header(
                stamp=Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                frame_id=topic.strip("/").split("/")[-2] if topic.count("/") > 1 else "camera",
            )
            if isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            elif compressed:
                fmt, blob = rgb8_to_compressed(payload, compressed_format)
                data = typestore.serialize_cdr(
                    CompressedImage(header=header, format=fmt, data=np.frombuffer(blob, np.uint8)), msgtype
                )
            else:
                fields = payload if not isinstance(payload, np.ndarray) else array_to_image(payload, "rgb8")
                data = typestore.serialize_cdr(
                    Image(
                        header=header,
                        height=fields.height,
                        width=fields.width,
                        encoding=fields.encoding,
                        is_bigendian=fields.is_bigendian,
                        step=fields.step,
                        data=np.frombuffer(fields.data, np.uint8),
                    ),
                    msgtype,
                )
            writer.write(connections[topic], int(stamp_ns), data)
            count += 1
    return count


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: the changes applied to the base config, and the result."""

    label: str
    changes: dict[str, Any]
    config: SelectionConfig


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """Return (key, values) of ``key=v1,v2,...``; values are read as YAML scalars (0.3, true, png)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--sweep {text!r}: expected key=v1,v2,... (e.g. policy.params.threshold=0.3,0.5)")
    parsed = []
    for raw in values.split(","):
        raw = raw.strip()
        if not raw:
            raise ConfigError(f"--sweep {text!r}: empty value")
        try:
            parsed.append(yaml.safe_load(raw))
        except yaml.YAMLError:
            parsed.append(raw)
    return key, parsed


def sweep_settings(base: SelectionConfig, sweeps: Sequence[str] = ()) -> list[Setting]:
    """Return every combination of the swept values applied to ``base`` (the base alone without sweeps)."""
    if not sweeps:
        return [Setting("base", {}, base)]
    axes = [parse_sweep(text) for text in sweeps]
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep: a key is swept twice ({', '.join(keys)})")
    varied = [key for key, values in axes if len(values) > 1] or keys
    settings = []
    for values in itertools.product(*(values for _, values in axes)):
        changes = dict(zip(keys, values))
        config = apply_changes(base, changes, source="--sweep " + " ".join(f"{k}={v}" for k, v in changes.items()))
        # the label names what varies; keys held at one value are in every row of the CSV
        settings.append(Setting(" ".join(f"{k}={changes[k]}" for k in varied), changes, config))
    return settings


# --------------------------------------------------------------------------- replay


@dataclass
class SettingResult:
    """What one setting kept over the whole bag."""

    setting: Setting
    frames: int = 0
    kept: int = 0
    random: int = 0
    candidates: int = 0
    duplicates: int = 0
    budget_limited: int = 0
    kept_bytes: int = 0
    kept_by_class: Counter = field(default_factory=Counter)
    score_sum_kept: float = 0.0
    score_sum_dropped: float = 0.0
    thresholds: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    kept_frames: list[tuple[str, int, float, str]] = field(default_factory=list)  # topic, index, score, reason

    def per_hour(self, value: float, duration_s: float) -> float:
        return value * 3600.0 / duration_s if duration_s > 0 else float("nan")

    @property
    def mean_score_kept(self) -> float:
        return self.score_sum_kept / self.kept if self.kept else float("nan")

    @property
    def mean_score_dropped(self) -> float:
        dropped = self.frames - self.kept
        return self.score_sum_dropped / dropped if dropped else float("nan")

    @property
    def threshold_median(self) -> float:
        return float(np.median(self.thresholds)) if self.thresholds else float("nan")


@dataclass
class ReplayReport:
    """A whole replay: bag facts, problems, one result per setting."""

    bag: str
    frames: int
    duration_s: float
    wall_s: float
    problems: list[BagProblem]
    unknown_encodings: Counter
    results: list[SettingResult]
    labels: tuple[str, ...]
    robots: list[str]
    outputs: list[Path] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Return bag seconds replayed per wall second."""
        return self.duration_s / self.wall_s if self.wall_s > 0 else float("nan")


def replay(
    bags: str | Path | Sequence[str | Path],
    models: str | Path,
    base: SelectionConfig,
    sweeps: Sequence[str] = (),
    topics: Sequence[str] | None = None,
    progress: bool = True,
    cascade_config=None,
) -> ReplayReport:
    """Return the replay of one or more bags (in order) through the cascade in ``models`` and each setting.

    A bag that cannot be opened at all (e.g. a recording cut short before its index was
    written) is reported as a problem and the replay goes on with the next one.
    """
    from tqdm import tqdm

    from fleetloop_core.tasks import load_cascade

    bags = [Path(bags)] if isinstance(bags, (str, Path)) else [Path(b) for b in bags]
    settings = sweep_settings(base, sweeps)
    models = Path(models)
    if not (models / "T4" / "manifest.json").is_file():
        raise ReplayError(f"{models}: no T4 model (run `fleetloop models build --out {models}`)")
    escalation = "T3" if (models / "T3" / "manifest.json").is_file() else None
    cascade = load_cascade(models, "T4", escalation, cascade_config)  # by the models' task
    labels = cascade.frame_labels
    results = [SettingResult(s) for s in settings]
    selectors: dict[tuple[int, str], Selector] = {}
    problems: list[BagProblem] = []
    unknown: Counter[str] = Counter()
    frames = 0
    first_stamp = last_stamp = None
    bag_duration = 0.0
    start = time.perf_counter()
    for bag in bags:
        try:
            reader = BagReader(bag, topics).__enter__()
        except ReplayError as exc:
            if len(bags) == 1:
                raise
            problems.append(BagProblem(str(bag), -1, "unreadable_bag", str(exc)))
            log.error("%s (going on with the next bag)", exc)
            continue
        try:
            bar = tqdm(
                reader.frames(), total=reader.message_count, desc=f"replay {bag.name}", unit="msg", disable=not progress
            )
            for item in bar:
                if isinstance(item, BagProblem):
                    problems.append(item)
                    if item.kind == "unknown_encoding":
                        unknown[item.detail] += 1
                    else:
                        log.warning("%s: %s", bag, item)
                    continue
                frames += 1
                first_stamp = item.stamp_ns if first_stamp is None else min(first_stamp, item.stamp_ns)
                last_stamp = item.stamp_ns if last_stamp is None else max(last_stamp, item.stamp_ns)
                result = cascade.infer(item.image, stream=item.topic)
                for i, outcome in enumerate(results):
                    _offer(outcome, selectors, i, item, result, labels)
            bar.close()
            bag_duration += reader.duration_s
        finally:
            reader.close()
    for (i, _), selector in selectors.items():
        results[i].candidates += selector.stats.candidates
    duration = (last_stamp - first_stamp) / 1e9 if frames > 1 else bag_duration
    return ReplayReport(
        bag=", ".join(str(b) for b in bags),
        frames=frames,
        duration_s=duration or bag_duration,
        wall_s=time.perf_counter() - start,
        problems=problems,
        unknown_encodings=unknown,
        results=results,
        labels=labels,
        robots=sorted({robot for _, robot in selectors}),
    )


def _offer(
    outcome: SettingResult, selectors: dict, i: int, item: BagFrame, result: Any, labels: tuple[str, ...]
) -> None:
    selector = selectors.get((i, item.robot_id))
    if selector is None:
        selector = selectors[(i, item.robot_id)] = Selector(
            outcome.setting.config, item.robot_id, labels, source=outcome.setting.label
        )
    decision = selector.offer(item.image, result, item.stamp_ns, stream=item.stream)
    outcome.frames += 1
    outcome.scores.append(decision.score)
    if decision.threshold is not None:
        outcome.thresholds.append(decision.threshold)
    outcome.duplicates += decision.duplicate
    outcome.budget_limited += decision.budget_limited
    if decision.keep:
        outcome.kept += 1
        outcome.random += decision.random
        outcome.kept_bytes += decision.record.encode().size_bytes
        outcome.kept_by_class[labels[result.label]] += 1
        outcome.score_sum_kept += decision.score
        outcome.kept_frames.append((item.topic, item.index, decision.score, decision.reason))
    else:
        outcome.score_sum_dropped += decision.score


# --------------------------------------------------------------------------- outputs

CSV_COLUMNS = (
    "setting",
    "frames",
    "kept",
    "kept_fraction",
    "candidate_fraction",
    "kept_per_hour",
    "bytes_per_hour",
    "random",
    "duplicates",
    "budget_limited",
    "mean_score_kept",
    "mean_score_dropped",
    "threshold_median",
)


def _row(result: SettingResult, duration_s: float, labels: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "setting": result.setting.label,
        "frames": result.frames,
        "kept": result.kept,
        "kept_fraction": round(result.kept / result.frames, 6) if result.frames else 0.0,
        "candidate_fraction": round(result.candidates / result.frames, 6) if result.frames else 0.0,
        "kept_per_hour": round(result.per_hour(result.kept, duration_s), 2),
        "bytes_per_hour": round(result.per_hour(result.kept_bytes, duration_s)),
        "random": result.random,
        "duplicates": result.duplicates,
        "budget_limited": result.budget_limited,
        "mean_score_kept": round(result.mean_score_kept, 4),
        "mean_score_dropped": round(result.mean_score_dropped, 4),
        "threshold_median": round(result.threshold_median, 4),
    }
    for key, value in result.setting.changes.items():
        row[key] = value
    for label in labels:
        row[f"kept_{label}"] = result.kept_by_class.get(label, 0)
    return row


def write_outputs(report: ReplayReport, out: str | Path) -> list[Path]:
    """Write replay.csv, kept_frames.csv and the PNG plots into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(r, report.duration_s, report.labels) for r in report.results]
    swept = list(report.results[0].setting.changes) if report.results else []
    columns = [*CSV_COLUMNS[:1], *swept, *CSV_COLUMNS[1:], *(f"kept_{label}" for label in report.labels)]
    paths = []
    table = out / "replay.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths.append(table)
    kept = out / "kept_frames.csv"
    with kept.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "topic", "index", "score", "reason"])
        for result in report.results:
            for topic, index, score, reason in result.kept_frames:
                writer.writerow([result.setting.label, topic, index, round(score, 4), reason])
    paths.append(kept)

    # kept fraction and bytes/hour versus the swept value, with what the budget allows
    varied = [k for k in swept if len({repr(r.setting.changes[k]) for r in report.results}) > 1]
    x_key = varied[0] if varied else (swept[0] if swept else None)
    numeric = x_key is not None and all(
        isinstance(r.setting.changes[x_key], (int, float)) and not isinstance(r.setting.changes[x_key], bool)
        for r in report.results
    )
    robots = max(len(report.robots), 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[tuple[Any, dict[str, Any], SettingResult]]] = {}
    for result, row in zip(report.results, rows):
        rest = " ".join(f"{k}={v}" for k, v in result.setting.changes.items() if k in varied and k != x_key)
        groups.setdefault(rest, []).append((result.setting.changes.get(x_key, result.setting.label), row, result))
    for rest, points in groups.items():
        if numeric:
            points.sort(key=lambda p: p[0])
        xs = [p[0] if numeric else str(p[0]) for p in points]
        line = left.plot(xs, [p[1]["kept_fraction"] for p in points], marker="o", label=f"kept {rest}".strip())[0]
        left.plot(
            xs,
            [p[1]["candidate_fraction"] for p in points],
            marker="^",
            linestyle=":",
            color=line.get_color(),
            label=f"passed the policy {rest}".strip(),
        )
        right.plot(
            xs,
            [p[1]["bytes_per_hour"] / 1e6 for p in points],
            marker="o",
            color=line.get_color(),
            label=rest or "uploaded",
        )
        if report.duration_s > 0 and report.frames:
            frames_per_hour = report.frames * 3600.0 / report.duration_s
            budget = [robots * p[2].setting.config.budget.frames_per_hour / frames_per_hour for p in points]
            left.plot(
                xs,
                budget,
                linestyle="--",
                color=line.get_color(),
                alpha=0.6,
                label=f"budget{' ' + rest if rest else ''}",
            )
            right.plot(
                xs,
                [robots * p[2].setting.config.budget.bytes_per_hour / 1e6 for p in points],
                linestyle="--",
                color=line.get_color(),
                alpha=0.6,
                label=f"budget{' ' + rest if rest else ''}",
            )
    left.set_yscale("log")
    for axis, title in ((left, "fraction of frames"), (right, "upload MB per hour (all robots)")):
        axis.set_xlabel(x_key or "setting")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    names = ", ".join(Path(b).name for b in report.bag.split(", "))
    figure.suptitle(
        f"{names}: {report.frames} frames from {robots} robot(s), {report.duration_s / 60:.1f} min", fontsize=9
    )
    figure.tight_layout()
    sweep_png = out / f"kept_vs_{(x_key or 'setting').replace('.', '_')}.png"
    figure.savefig(sweep_png, dpi=100)
    plt.close(figure)
    paths.append(sweep_png)

    # value-score histogram with each setting's (median) threshold
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    scores = np.asarray(report.results[0].scores if report.results else [], float)
    axis.hist(scores, bins=50, range=(0, 1), color="0.6", label="value score, all frames")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(report.results):
        if not math.isnan(result.threshold_median):
            axis.axvline(
                result.threshold_median,
                color=colours[i % len(colours)],
                linestyle="--",
                label=f"{result.setting.label}: threshold {result.threshold_median:.2f}, kept {result.kept}",
            )
    axis.set_xlabel("value score (weighted uncertainty, 0..1)")
    axis.set_ylabel("frames")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    histogram = out / "score_histogram.png"
    figure.savefig(histogram, dpi=110)
    plt.close(figure)
    paths.append(histogram)
    report.outputs = paths
    return paths


def print_report(report: ReplayReport, console=None) -> None:
    """Print the per-setting table and the bag's problems."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        probe = Console()
        console = probe if probe.is_terminal else Console(width=150)  # logs and CI: no wrapping
    console.print(
        f"[bold]{report.bag}[/]: {report.frames} frames from {len(report.robots)} robot(s), "
        f"{report.duration_s:.1f} s of recording replayed in {report.wall_s:.1f} s "
        f"({report.speedup:.0f}x real time)"
    )
    table = Table(title="selection per setting")
    for column in (
        "setting",
        "kept",
        "kept/h",
        "MB/h",
        "score kept/dropped",
        "dups removed",
        "random",
        "over budget",
        "kept classes",
    ):
        table.add_column(column, justify="left" if column in ("setting", "kept classes") else "right")
    for result in report.results:
        classes = ", ".join(f"{name} {count}" for name, count in result.kept_by_class.most_common())
        table.add_row(
            result.setting.label,
            str(result.kept),
            f"{result.per_hour(result.kept, report.duration_s):.0f}",
            f"{result.per_hour(result.kept_bytes, report.duration_s) / 1e6:.1f}",
            f"{result.mean_score_kept:.3f} / {result.mean_score_dropped:.3f}",
            str(result.duplicates),
            str(result.random),
            str(result.budget_limited),
            classes or "-",
        )
    console.print(table)
    if report.unknown_encodings:
        console.print(
            "unknown encodings (skipped): "
            + ", ".join(f"{name} x{count}" for name, count in report.unknown_encodings.most_common())
        )
    others = [p for p in report.problems if p.kind != "unknown_encoding"]
    for problem in others[:20]:
        console.print(f"[yellow]problem[/] {problem}")
    if len(others) > 20:
        console.print(f"... and {len(others) - 20} more problems")
    for path in report.outputs:
        console.print(f"wrote {path}")
