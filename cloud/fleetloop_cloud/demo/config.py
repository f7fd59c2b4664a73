"""Demo settings (config/demo.yaml), validated on load; ``--quick`` merges the ``quick`` section.

The top level is the classification demo's; the ``detection`` section is the detection demo's
(``fleetloop demo --task detection``), quick-merged the same way (``quick: {detection: ...}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from fleetloop_core.config import ConfigModel, default_config_path, read_yaml, validate


class Arms(ConfigModel):
    random_upload: bool = True
    upload_all: bool = True
    active_learning: bool = True
    hard_mode: bool = True
    campaign: bool = True  # the loop's robots and cloud with data campaigns (approve: auto), beside the loop


class ActiveLearningSettings(ConfigModel):
    budgets: list[int] = Field(default_factory=lambda: [11, 16, 22, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724])
    repeats: int = Field(default=3, ge=1)
    target_share: float = Field(default=0.95, gt=0.0, le=1.0)


class RobotOverrides(ConfigModel):
    shadow_min_agreement: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow_agreement_min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow_max_latency_p99_ms: float = Field(default=200.0, gt=0.0)
    watchdog_min_frames: int = Field(default=30, ge=1)
    watchdog_confidence_min_frames: int = Field(default=100, ge=1)
    shadow_stride_frames: int = Field(default=10, ge=1)
    watchdog_max_latency_ms: float = Field(default=200.0, gt=0.0)
    watchdog_window_s: float = Field(default=5.0, gt=0.0)
    # ROS robots: a watch short of min_frames at its window waits this long after the swap for them (the next
    # round's camera), then passes unjudged (robot.yaml: 300 s; here nothing streams after the last round's deploy)
    watchdog_unjudged_after_s: float = Field(default=15.0, gt=0.0)
    # T4 + T3 a frame (robot.yaml: 20 ms): robots sharing cores skip T3 by the machine's load, not their own
    cascade_latency_budget_ms: float = Field(default=1000.0, gt=0.0)
    # in-process robots: their watches are fed frames (demo.watch_feed) and end on window_frames; the window
    # only bounds a watch that gets too few (then what it saw depends on the machine's speed)
    in_process_watchdog_window_s: float = Field(default=60.0, gt=0.0)

    def cascade_overrides(self) -> dict[str, Any]:
        """Return the overrides of the robots' cascade settings (robot.yaml ``cascade``, the task's block)."""
        return {"latency_budget_ms": self.cascade_latency_budget_ms}

    def manager_overrides(self, in_process: bool = False) -> dict[str, Any]:
        """Return the overrides of config/model_manager.yaml's ``model_manager`` section (demo robots, CPU);
        ``in_process``: for robots in this process, whose watches the watch feed serves."""
        window_s = self.in_process_watchdog_window_s if in_process else self.watchdog_window_s
        # in-process robots' watches are fed their frames: their window is the bound
        wait_s = window_s if in_process else max(window_s, self.watchdog_unjudged_after_s)
        return {
            "shadow": {
                "min_agreement": self.shadow_min_agreement,
                "agreement_min_confidence": self.shadow_agreement_min_confidence,
                "max_latency_p99_ms": self.shadow_max_latency_p99_ms,
            },
            "watchdog": {
                "max_latency_ms": self.watchdog_max_latency_ms,
                "window_s": window_s,
                "unjudged_after_s": wait_s,
                "min_frames": self.watchdog_min_frames,
                "confidence_min_frames": self.watchdog_confidence_min_frames,
            },
            "ring_stride_frames": self.shadow_stride_frames,
            "providers": ["cpu"],
        }


class DetectionDemoConfig(ConfigModel):
    robots: int = Field(default=3, ge=1, le=16)
    rounds: int = Field(default=3, ge=1, le=20)
    frames_per_robot: int = Field(default=400, ge=1)  # camera frames per robot per round (10 Hz: 40 s)
    frames_per_hour: float = Field(default=3600.0, gt=0.0)  # upload budget per robot (40 of 400 frames a round)
    seed: int = 0
    models_profile: str = "detection-default"  # config/models.yaml profile of the reference detectors
    test_frames_per_site: int = Field(default=120, ge=1)  # held-out field frames per site (the gate's)
    teacher_epochs: int = Field(default=4, ge=1)
    distil_epochs: int = Field(default=4, ge=1)
    warm_start_epochs: int = Field(default=3, ge=1)
    lab_replay_frames: int = Field(default=300, ge=0)
    calibration_sample: int = Field(default=60, ge=1)
    upload_all_epochs: int = Field(default=3, ge=1)
    # overrides of the promotion gate (cloud.yaml evaluation: min_gain, max_site_regression, ...)
    gate: dict[str, float] = Field(default_factory=dict)


class DemoConfig(ConfigModel):
    robots: int = Field(default=4, ge=1, le=16)
    rounds: int = Field(default=3, ge=1, le=20)
    frames_per_robot: int = Field(default=1200, ge=50)
    upload_fraction: float = Field(default=0.05, gt=0.0, le=1.0)
    random_share: float = Field(default=0.2, ge=0.0, le=1.0)
    seed: int = 0
    ros: bool = True
    control_plane: Literal["local", "mqtt"] = "local"
    camera_window: int = Field(default=4, ge=1)
    arms: Arms = Field(default_factory=Arms)
    hard_mode_frames: int = Field(default=150, ge=10)
    upload_all_epochs: int = Field(default=2, ge=1)
    active_learning: ActiveLearningSettings = Field(default_factory=ActiveLearningSettings)
    cloud: dict[str, Any] = Field(default_factory=dict)
    robot: RobotOverrides = Field(default_factory=RobotOverrides)
    quick: Optional[dict[str, Any]] = None
    camera_rate_hz: float = Field(default=10.0, gt=0.0)
    models_profile: str = "default"  # config/models.yaml profile of the round-0 models
    detection: DetectionDemoConfig = Field(default_factory=DetectionDemoConfig)  # fleetloop demo --task detection


def merge(base: dict, extra: dict) -> dict:
    """Return ``base`` with ``extra`` merged in (nested dicts key by key, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_demo_config(
    path: str | Path | None = None, quick: bool = False, overrides: dict[str, Any] | None = None
) -> DemoConfig:
    """Return the demo config (with the quick profile and command-line overrides merged)."""
    path = Path(path) if path else default_config_path("demo.yaml")
    data = read_yaml(path)
    if quick:
        data = merge(data, data.get("quick") or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = merge(data, given)
    # a bad value may come from the command line: say so beside the file
    source = f"{path} + command-line overrides ({', '.join(sorted(given))})" if given else str(path)
    return validate(DemoConfig, data, source=source)
