"""Settings of the review page (config/review_page.yaml), validated on load.

The cloud loop's own settings stay in config/cloud.yaml; this file only says how the page
serves: where it binds, how long a lease lasts, how many auto-labels an audit grid shows, where
replay sweeps are read from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from fleetloop_core.config import ConfigModel, default_config_path, load_config

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ReviewPageConfig(ConfigModel):
    """config/review_page.yaml."""

    host: str = "127.0.0.1"  # any other bind address requires a token
    port: int = Field(default=8080, ge=1, le=65535)
    token: Optional[str] = Field(default=None, min_length=16)  # None: generated and printed once when needed
    lease_s: float = Field(default=300.0, gt=0)  # an unanswered leased task returns to the queue after this, seconds
    grid_size: int = Field(default=24, ge=1, le=200)  # auto-labels per audit grid page
    max_answer_s: float = Field(default=600.0, gt=0)  # a longer measured time is clamped, seconds
    session_hours: float = Field(default=12.0, gt=0)  # a browser session expires after this, hours
    replay_dirs: tuple[str, ...] = ("runs/replay",)  # searched for `fleetloop replay` outputs (replay.csv)
    max_upload_bytes: int = Field(default=1_000_000, gt=0)  # uploaded sweep CSVs, bytes
    store_stats_ttl_s: float = Field(default=60.0, ge=0)  # per-robot store listing is cached this long, seconds


def load_review_page_config(path: str | Path | None = None) -> ReviewPageConfig:
    """Return config/review_page.yaml (or ``path``) validated; defaults when the shipped file is absent."""
    if path is None:
        path = default_config_path("review_page.yaml")
        if not Path(path).is_file():
            return ReviewPageConfig()
    return load_config(ReviewPageConfig, path)
