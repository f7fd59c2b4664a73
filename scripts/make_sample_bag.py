#!/usr/bin/env python3
"""Write a small real rosbag2 of field-shifted frames from the simulated world (fleetloop_sim.sim).

Several robots at different field sites, two camera streams each:
  /<robot>/front/image_raw              sensor_msgs/Image (rgb8 on even robots, bgr8 on odd ones)
  /<robot>/rear/image_raw/compressed    sensor_msgs/CompressedImage (JPEG)
Each robot parks now and then: the same frame is recorded again for a while (what deduplication
must catch), and it revisits items (the sim's revisit probability). Stamps advance at the
stream rate (10 Hz), so budgets per hour mean what they say.

    python scripts/make_sample_bag.py runs/sample_bag --frames 600 --robots 2 --storage mcap
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def sample_messages(
    frames: int,
    robots: int,
    seed: int = 0,
    park_every: int = 120,
    park_frames: int = 25,
    start_ns: int = 1_700_000_000_000_000_000,
):
    """Yield (topic, stamp_ns, payload) for every robot and stream, interleaved by stamp."""
    from fleetloop_sim import sim
    from fleetloop_core.ros_convert import array_to_image

    streams = []
    for r in range(robots):
        site = sim.make_site(r, seed=seed)
        for name in ("front", "rear"):
            camera = sim.CameraStream(
                site, f"robot_{r}-{name}", seed=seed + 17 * r + (name == "rear"), start_ns=start_ns
            )
            topic = f"/robot_{r}/{name}/image_raw" + ("/compressed" if name == "rear" else "")
            streams.append((r, topic, camera))
    period_ns = 100_000_000
    parked: dict[str, tuple[int, np.ndarray]] = {}
    iterators = {topic: camera.frames(frames) for _, topic, camera in streams}
    for i in range(frames):
        stamp = start_ns + i * period_ns
        for r, topic, _ in streams:
            frame = next(iterators[topic]).image
            if i % park_every == park_every // 2:
                parked[topic] = (park_frames, frame)
            left, still = parked.get(topic, (0, None))
            if left > 0:
                frame = still  # parked: the camera sees the same scene again
                parked[topic] = (left - 1, still)
            if topic.endswith("/compressed"):
                yield topic, stamp, frame
            elif r % 2 == 1:
                yield topic, stamp, array_to_image(np.ascontiguousarray(frame[..., ::-1]), "bgr8")
            else:
                yield topic, stamp, frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="bag directory to create (must not exist)")
    parser.add_argument("--frames", type=int, default=600, help="frames per stream (10 Hz)")
    parser.add_argument("--robots", type=int, default=2)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from fleetloop_core.bags import write_image_bag

    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; remove it first", file=sys.stderr)
        return 1
    count = write_image_bag(out, sample_messages(args.frames, args.robots, args.seed), storage=args.storage)
    print(
        f"wrote {out}: {count} messages, {args.robots} robots x 2 streams x {args.frames} frames "
        f"({args.frames / 10:.0f} s at 10 Hz), {args.storage}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
