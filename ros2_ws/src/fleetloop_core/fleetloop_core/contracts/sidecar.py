"""The JSON sidecar that travels with every uploaded frame (robot -> store -> cloud ingest).

It says where the frame came from, what the robot's tiers thought of it and why it was kept.
``simulation`` holds ground truth in the simulated world only: the cloud's simulated annotators
and the evaluation read it; no model ever does.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Final, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetloop_core.errors import FleetLoopError

SCHEMA: Final = "fleetloop.sidecar/1"
WALL_CLOCK_FROM_NS: Final = 946_684_800 * 10**9  # 2000-01-01 UTC: an earlier stamp is no wall-clock time


class SidecarError(FleetLoopError):
    """A sidecar is malformed (message names the object and the key)."""


class Decision(BaseModel):
    """Why the selector kept the frame."""

    model_config = ConfigDict(extra="allow")

    keep: bool = True
    policy: str
    score: float  # the frame's value score
    threshold: Optional[float] = None
    reason: str = ""
    parts: dict[str, float] = Field(default_factory=dict)  # weighted score components
    random: bool = False  # kept by the unbiased random fraction
    budget: dict[str, Any] = Field(default_factory=dict)


class SimulationTruth(BaseModel):
    """Ground truth of a simulated frame (never a model input)."""

    model_config = ConfigDict(extra="forbid")

    label: int
    item: int = -1
    track_id: int = -1
    site: str = ""
    boxes: Optional[list[list[float]]] = None  # detection world: [x0, y0, x1, y1, class, track_id] per item


class Sidecar(BaseModel):
    """Metadata of one uploaded frame."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["fleetloop.sidecar/1"] = Field(default=SCHEMA, alias="schema")
    robot_id: str = Field(min_length=1)
    stream: str = "camera"
    stamp_ns: int = Field(ge=0)
    frame_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    encoding: Literal["png", "jpeg"] = "png"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    labels: list[str] = Field(default_factory=list)  # class names the outputs index into
    model_versions: dict[str, str] = Field(default_factory=dict)
    tier_outputs: dict[str, list[float]] = Field(default_factory=dict)  # probs per tier that ran
    detections: Optional[dict[str, list[list[float]]]] = None  # detectors: per tier [x0, y0, x1, y1, score, class]
    embedding: Optional[list[float]] = None  # T4 embedding (for cloud diversity / dedup)
    prediction: int = -1  # the robot's label (index into labels)
    confidence: float = 0.0
    tier_used: str = ""
    scores: dict[str, float] = Field(default_factory=dict)
    decision: Optional[Decision] = None
    track_hint: Optional[str] = None  # robot-side track id, if it tracks
    site: str = ""
    simulation: Optional[SimulationTruth] = None
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

    def to_json(self) -> str:
        """Return compact JSON (stable key order)."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True, separators=(",", ":")
        )

    @property
    def date(self) -> str:
        """Return the UTC date (YYYY-MM-DD) used in object keys: the frame's stamp's, or, for a stamp before
        2000 (no wall-clock time: an unstamped frame's 0, a camera counting from its boot), the day the robot
        made the sidecar, so such frames are not filed under 1970-01-01."""
        if self.stamp_ns < WALL_CLOCK_FROM_NS:
            try:
                return datetime.fromisoformat(self.created).astimezone(timezone.utc).strftime("%Y-%m-%d")
            except ValueError:  # a sidecar from elsewhere with an odd creation time: the stamp's date
                pass
        return self.stamp_date

    @property
    def stamp_date(self) -> str:
        """Return the UTC date of the frame's stamp (YYYY-MM-DD): the key date of every frame before 2026-12-06."""
        return datetime.fromtimestamp(self.stamp_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d")


def parse_sidecar(data: bytes | str | dict, where: str = "<sidecar>") -> Sidecar:
    """Return a Sidecar from JSON bytes/text or a dict; SidecarError naming ``where`` and the key."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SidecarError(f"{where}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SidecarError(f"{where}: sidecar must be a JSON object")
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "missing":
                problems.append(f"missing key {key}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key}")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise SidecarError(f"{where}: " + "; ".join(problems)) from None


def frame_key(sidecar: Sidecar) -> str:
    """Return the object key of the frame: frames/<robot>/<date>/<sha256>.<png|jpg>."""
    extension = "png" if sidecar.encoding == "png" else "jpg"
    return f"frames/{sidecar.robot_id}/{sidecar.date}/{sidecar.frame_sha256}.{extension}"


def sidecar_key(sidecar: Sidecar) -> str:
    """Return the object key of the sidecar: frames/<robot>/<date>/<sha256>.json."""
    return f"frames/{sidecar.robot_id}/{sidecar.date}/{sidecar.frame_sha256}.json"


def sidecar_keys(sidecar: Sidecar) -> tuple[str, ...]:
    """Return the keys a sidecar may be stored at: :func:`sidecar_key`, and the stamp-dated key robots before
    2026-12-06 used for frames stamped before 2000 (still in stores and queues)."""
    legacy = f"frames/{sidecar.robot_id}/{sidecar.stamp_date}/{sidecar.frame_sha256}.json"
    return (sidecar_key(sidecar),) if legacy == sidecar_key(sidecar) else (sidecar_key(sidecar), legacy)
