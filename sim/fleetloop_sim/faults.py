"""Crash-safety harness for the upload queue: kill an uploader with SIGKILL, then audit the store.

A *worker* process (``python -m fleetloop_sim.faults worker ...``) puts records from a spool
directory into a queue and uploads them, one by one, logging every accepted record's key
(fsync'd) after ``put`` returns. :func:`kill_campaign` starts workers and kills them with
SIGKILL at random moments, then lets one finish and :func:`audit` checks the promise of
``fleetloop_core.upload_queue``: every accepted frame is in the store exactly once (with its
sidecar) or still queued; nothing is lost, duplicated or half-written.

Used by ``tests/integration/test_queue_faults.py`` and ``benchmarks/selection_queue.py``.

~441 lines in one module on purpose: the worker (this module run as a process) and the campaign
that kills it share the spool, the accepted-keys log and the audit's reading of both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from fleetloop_core.record import EncodedRecord
from fleetloop_core.contracts.sidecar import parse_sidecar

if TYPE_CHECKING:
    from fleetloop_core.store import ObjectStore

SPOOL_INDEX = "spool.json"
# store URI -> store opened by the zygote before it forks (boto3 set-up is slow)
_WARM_STORES: dict[str, ObjectStore] = {}


def write_spool(directory: str | Path, records: Sequence[EncodedRecord]) -> Path:
    """Write records as files a worker can put (frame, sidecar JSON, priority); return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for i, record in enumerate(records):
        (directory / f"{i}.frame").write_bytes(record.frame)
        (directory / f"{i}.json").write_bytes(record.sidecar_json)
        index.append(
            {"frame": f"{i}.frame", "sidecar": f"{i}.json", "priority": record.priority, "frame_key": record.frame_key}
        )
    (directory / SPOOL_INDEX).write_text(json.dumps(index))
    return directory


def read_spool(directory: str | Path) -> list[EncodedRecord]:
    """Return the records written by :func:`write_spool`."""
    directory = Path(directory)
    records = []
    for item in json.loads((directory / SPOOL_INDEX).read_text()):
        sidecar = parse_sidecar((directory / item["sidecar"]).read_bytes(), item["sidecar"])
        records.append(EncodedRecord((directory / item["frame"]).read_bytes(), sidecar, item["priority"]))
    return records


def synthetic_records(
    round_index: int, count: int, size: int = 48, seed: int = 0, stamp0_ns: int = 1_700_000_000_000_000_000
) -> list[EncodedRecord]:
    """Return ``count`` small distinct PNG records (random pixels) with keys unique to ``round_index``."""
    import numpy as np

    rng = np.random.default_rng([seed, round_index])
    records = []
    for i in range(count):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        fields = {
            "robot_id": f"robot-{round_index}",
            "stream": "camera",
            "stamp_ns": stamp0_ns + i * 100_000_000,
            "labels": ["a", "b"],
            "prediction": int(i % 2),
            "confidence": 0.5,
        }
        records.append(EncodedRecord.from_image(image, fields, priority=float(rng.random())))
    return records


def read_accepted(path: str | Path) -> list[str]:
    """Return the keys in an accepted log (a torn last line, from a kill mid-write, is ignored)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # only newline-terminated lines were complete


def _worker(argv: Sequence[str]) -> int:
    """Put the spool's records into the queue one by one, uploading after each put; then drain."""
    parser = argparse.ArgumentParser(prog="python -m fleetloop_sim.faults worker")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--accepted", required=True)
    parser.add_argument("--disk-cap", type=int, default=1 << 30)
    parser.add_argument("--uploads-per-put", type=int, default=1)
    args = parser.parse_args(argv)

    from fleetloop_core.store import open_store
    from fleetloop_core.upload_queue import BackoffConfig, QueueConfig, UploadQueue
    from fleetloop_core.uploader import Uploader

    records = read_spool(args.spool)
    accepted = set(read_accepted(args.accepted))
    config = QueueConfig(
        directory=args.queue,
        store=args.store,
        disk_cap_bytes=args.disk_cap,
        backoff=BackoffConfig(initial_s=0.01, max_s=0.05),
        orphan_grace_s=0.0,
    )
    queue = UploadQueue.from_config(config)
    store = _WARM_STORES.get(args.store) or open_store(args.store)
    uploader = Uploader(queue, store, config)  # recovers what a killed worker left
    log = open(args.accepted, "a", encoding="utf-8")
    print("ready", flush=True)
    for record in records:
        if record.frame_key in accepted:
            continue
        result = queue.put(record)
        if result.accepted:
            log.write(record.frame_key + "\n")
            log.flush()
            os.fsync(log.fileno())
        uploader.drain(max_records=args.uploads_per_put)
    report = uploader.drain()
    print(json.dumps({"done": True, "uploaded": report.uploaded, "left": len(queue)}), flush=True)
    queue.close()
    return 0


@dataclass
class AuditReport:
    """What the store and queue hold compared with what was accepted."""

    accepted: int = 0
    committed: int = 0  # frame + sidecar in the store
    still_queued: int = 0
    lost: int = 0  # accepted, neither committed nor queued
    duplicated: int = 0  # extra copies of a frame's content under another key
    half_written: int = 0  # objects whose bytes do not match their sha256, or sidecar without frame
    unknown: int = 0  # store objects that were never in the spool
    problems: list[str] = field(default_factory=list)


def audit(
    store: ObjectStore,
    queue_keys: Sequence[str],
    accepted: Sequence[str],
    records: Sequence[EncodedRecord],
    prefix_keys: bool = False,
) -> AuditReport:
    """Return the audit of ``store`` and the queue against the accepted keys (see module doc).

    With ``prefix_keys`` only the objects of ``records`` are looked at (others are not counted
    as unknown): for auditing one round of a campaign in a shared store.
    """
    report = AuditReport(accepted=len(set(accepted)), still_queued=len(set(queue_keys)))
    by_key = {r.frame_key: r for r in records}
    sidecar_keys = {r.sidecar_key: r for r in records}
    frames_by_sha: dict[str, list[str]] = {}
    committed_frames, sidecars = set(), set()
    for info in store.list("frames/"):
        if info.key in by_key:
            data = store.get_bytes(info.key)
            sha = hashlib.sha256(data).hexdigest()
            if sha != by_key[info.key].sidecar.frame_sha256:
                report.half_written += 1
                report.problems.append(f"{info.key}: content does not match its sha256")
            frames_by_sha.setdefault(sha, []).append(info.key)
            committed_frames.add(info.key)
        elif info.key in sidecar_keys:
            expected = sidecar_keys[info.key].sidecar_json
            if store.get_bytes(info.key) != expected:
                report.half_written += 1
                report.problems.append(f"{info.key}: sidecar differs from the queued one")
            sidecars.add(info.key)
        elif not prefix_keys:
            report.unknown += 1
            report.problems.append(f"{info.key}: not a spooled record")
    for sha, keys in frames_by_sha.items():
        if len(keys) > 1:
            report.duplicated += len(keys) - 1
            report.problems.append(f"sha256 {sha[:12]} stored {len(keys)} times: {keys}")
    for key in sidecars:
        if sidecar_keys[key].frame_key not in committed_frames:
            report.half_written += 1
            report.problems.append(f"{key}: sidecar committed without its frame")
    queued = set(queue_keys)
    for key in set(accepted):
        record = by_key[key]
        done = key in committed_frames and record.sidecar_key in sidecars
        report.committed += done
        if not done and key not in queued:
            report.lost += 1
            report.problems.append(f"{key}: accepted but neither in the store nor queued")
    return report


@dataclass
class CampaignReport:
    """A kill campaign: how many kills, and the final audit."""

    kills: int
    audit: AuditReport
    worker_starts: int
    seconds: float


class _Zygote:
    """A process that imports the queue and store once, then forks one worker per request.

    Starting a fresh Python per kill costs 1-2 s of imports on a busy 2-core machine; a forked
    worker is ready in milliseconds and is killed just as hard (SIGKILL to its own pid).
    """

    def __init__(self, env: dict[str, str], store_uri: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetloop_sim.faults", "zygote", store_uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        if stdin is None or stdout is None or stderr is None:  # never: all three are PIPE above
            raise RuntimeError("fault zygote started without its pipes")
        self._requests, self._replies, self._errors = stdin, stdout, stderr
        line = self._replies.readline()
        if line.strip() != "zygote-ready":
            raise RuntimeError(f"fault zygote failed to start: {line!r} {self._errors.read()[-2000:]}")

    def fork(self, argv: list[str]) -> int:
        """Start a worker with ``argv``; return its pid once it is ready to work."""
        self._requests.write(json.dumps(argv) + "\n")
        self._requests.flush()
        pid = None
        while True:
            line = self._replies.readline()
            if not line:
                raise RuntimeError(f"fault zygote died: {self._errors.read()[-2000:]}")
            word, _, rest = line.strip().partition(" ")
            if word == "forked":
                pid = int(rest)
            elif word == "ready" and pid is not None:
                return pid
            elif word == "exit":
                raise RuntimeError(f"fault worker exited before it was ready: {line.strip()}")

    def wait(self, pid: int) -> int:
        """Return the worker's wait status word as the zygote reaped it."""
        while True:
            line = self._replies.readline()
            if not line:
                raise RuntimeError(f"fault zygote died: {self._errors.read()[-2000:]}")
            word, _, rest = line.strip().partition(" ")
            if word == "exit":
                exited_pid, status = (int(v) for v in rest.split())
                if exited_pid == pid:
                    return status

    def close(self) -> None:
        if self.process.poll() is None:
            self._requests.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self._replies, self._errors):
            stream.close()


def _zygote(store_uri: str) -> int:
    import fleetloop_core.upload_queue  # noqa: F401  (the imports every worker needs, paid once)
    from fleetloop_core.store import open_store

    # no request is made before the fork, so a child inherits no open connection
    _WARM_STORES[store_uri] = open_store(store_uri)
    print("zygote-ready", flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(argv)
            except BaseException as exc:  # the child must never return into the zygote's loop
                print(f"worker failed: {exc!r}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(f"forked {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)
    return 0


# one round of a campaign: its queue directory, accepted log, spool and the records it spools
_Round = tuple[Path, Path, Path, list[EncodedRecord]]


def _new_round(workdir: Path, rounds: list[_Round], make_records: Callable[[int], Sequence[EncodedRecord]]) -> _Round:
    """Spool the next round's records and append the round to ``rounds``; return it."""
    index = len(rounds)
    records = list(make_records(index))
    entry = (
        workdir / f"queue-{index}",
        workdir / f"accepted-{index}.log",
        write_spool(workdir / f"spool-{index}", records),
        records,
    )
    rounds.append(entry)
    return entry


def _worker_arguments(entry: _Round, store_uri: str, disk_cap: int) -> list[str]:
    """Return a fault worker's command-line arguments for one round."""
    queue_dir, accepted_log, spool, _ = entry
    return [
        "--queue",
        str(queue_dir),
        "--store",
        store_uri,
        "--spool",
        str(spool),
        "--accepted",
        str(accepted_log),
        "--disk-cap",
        str(disk_cap),
    ]


def kill_campaign(
    workdir: str | Path,
    store_uri: str,
    make_records: Callable[[int], Sequence[EncodedRecord]],
    kills: int,
    seed: int = 0,
    max_delay_s: float = 0.12,
    env: dict[str, str] | None = None,
    disk_cap: int = 1 << 30,
    progress: Callable[[int], None] | None = None,
) -> CampaignReport:
    """Run workers, SIGKILL ``kills`` of them at random moments, let each round finish, audit.

    A round is one queue and one spool (``make_records(round_index)``: records with keys of
    their own). Workers of a round resume each other's work after every kill; when a worker
    finishes before its kill moment the next round starts, so every kill lands during work and
    no round's upload can hide another round's loss.
    """
    # ~61 lines on purpose: one round's start, kill and resume loop reads top to bottom as it runs
    from fleetloop_core.store import open_store

    workdir = Path(workdir)
    rng = random.Random(seed)
    start = time.monotonic()
    done_kills = starts = 0
    rounds: list[_Round] = []

    def new_round() -> _Round:
        return _new_round(workdir, rounds, make_records)

    def arguments(entry: _Round) -> list[str]:
        return _worker_arguments(entry, store_uri, disk_cap)

    zygote = _Zygote({**os.environ, **(env or {})}, store_uri)
    try:
        current = new_round()
        while done_kills < kills:
            pid = zygote.fork(arguments(current))
            starts += 1
            time.sleep(rng.uniform(0.0, max_delay_s))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = zygote.wait(pid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                done_kills += 1
                if progress is not None:
                    progress(done_kills)
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                current = new_round()  # finished before the kill: next round
            else:
                raise RuntimeError(f"fault worker failed (wait status {status})")
        for entry in rounds:  # let every round finish
            pid = zygote.fork(arguments(entry))
            status = zygote.wait(pid)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                raise RuntimeError(f"final fault worker failed (wait status {status})")
    finally:
        zygote.close()
    report = _audit_rounds(open_store(store_uri), rounds)
    return CampaignReport(kills=done_kills, audit=report, worker_starts=starts, seconds=time.monotonic() - start)


def _audit_rounds(store: ObjectStore, rounds: list[_Round]) -> AuditReport:
    """Return the audit of every round (queue, accepted log, spool, records) and of the whole store."""
    from fleetloop_core.upload_queue import UploadQueue

    report = AuditReport()
    for queue_dir, accepted_log, _, records in rounds:
        with UploadQueue(queue_dir) as queue:
            queued = queue.keys()
        part = audit(store, queued, read_accepted(accepted_log), records, prefix_keys=True)
        for name in ("accepted", "committed", "still_queued", "lost", "duplicated", "half_written"):
            setattr(report, name, getattr(report, name) + getattr(part, name))
        report.problems.extend(part.problems)
    # objects that belong to no round, and copies across rounds, show up in one whole-store pass
    everything = [record for entry in rounds for record in entry[3]]
    whole = audit(store, [], [], everything)
    report.unknown, report.duplicated = whole.unknown, max(report.duplicated, whole.duplicated)
    report.problems.extend(p for p in whole.problems if p not in report.problems)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "zygote":
        return _zygote(argv[1])
    if not argv or argv[0] != "worker":
        print(
            "usage: python -m fleetloop_sim.faults worker --queue DIR --store URI --spool DIR --accepted FILE",
            file=sys.stderr,
        )
        return 2
    return _worker(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
