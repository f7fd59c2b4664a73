"""The local override of config/cloud.yaml that the routing view writes (``config/cloud.local.yaml``).

The shipped config/cloud.yaml stays as reviewed in git; a choice made on the page goes into
``<config>.local.yaml`` beside it (git-ignored), which ``load_cloud_config`` merges over the
shipped file, so the loop's next routing phase uses it. Only keys the page owns are written
(``routing.target_accuracy``); other keys already in the file are kept. The value is validated
against the loop's own schema before anything is written, and the file is replaced atomically.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml

from fleetloop_core.config import default_config_path, read_yaml, validate

from fleetloop_cloud.config import CloudConfig, RoutingConfig, local_overrides_path
from fleetloop_cloud.frames import write_atomic


def local_path(config_path: str | Path | None) -> Path:
    """Return the override file of a cloud config file: ``config/cloud.yaml`` -> ``config/cloud.local.yaml``."""
    return local_overrides_path(Path(config_path) if config_path else default_config_path("cloud.yaml"))


def read_overrides(path: Path) -> dict:
    """Return the override mapping ({} when the file does not exist)."""
    return read_yaml(path) if path.is_file() else {}


def save_target_accuracy(
    path: Path, config: CloudConfig, target: float, annotator: str, implied: Optional[dict] = None
) -> dict:
    """Write ``routing.target_accuracy`` into the override file (validated first); return the file's mapping."""
    routing = validate(
        RoutingConfig, {**config.routing.model_dump(), "target_accuracy": target}, source=str(path), prefix="routing"
    )
    data = read_overrides(path)
    data.setdefault("routing", {})
    if not isinstance(data["routing"], dict):
        data["routing"] = {}
    data["routing"]["target_accuracy"] = routing.target_accuracy
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# Local overrides of {path.name.replace('.local', '')}, merged over it when the loop loads its config.",
        f"# routing.target_accuracy set on the review page by {annotator} at {stamp}.",
    ]
    if implied:
        lines.append("# At that time it implied: " + ", ".join(f"{k} {v}" for k, v in implied.items()) + ".")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
    write_atomic(path, text.encode())
    return data
