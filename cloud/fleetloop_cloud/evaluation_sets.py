"""What every task's held-out test sets share: the simulated sites of a pool, the held-out
human-labeled frames, and the registry lookup by ``evaluation.test_set``.

* ``simulated-field``: per simulated site in the pool, field-test items of that site at the pool's
  frame size (never streamed, so never uploaded: nothing is measured on training data);
* ``holdout``: frames humans labeled that training never sees (a fixed hash-chosen fraction of
  the random calibration sample, a sample of the uploads: it measures accuracy on what robots upload,
  harder than their stream), for fleets outside the simulated world.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Mapping, TypeVar

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.pool import Pool
from fleetloop_cloud.pool_labels import LabelStore

Builder = TypeVar("Builder")


def simulated_sites(pool: Pool) -> list[tuple[str, int, int, int]]:
    """Return (site, site index, height, width) of every simulated site with frames (its most common size).

    ConfigError when the pool has no frames or a site not named ``site-<n>``.
    """
    rows = pool.frames()
    sites = sorted({r["site"] for r in rows})
    unknown = [s for s in sites if not re.fullmatch(r"site-\d+", s)]
    if unknown:
        raise ConfigError(
            f"evaluation.test_set: simulated-field knows sites named site-<n>, the pool has {unknown}; "
            f"use test_set: holdout for a real fleet"
        )
    if not sites:
        raise ConfigError("evaluation.test_set: the pool has no frames, so no site to test on")
    out = []
    for site in sites:
        sizes = [(r["height"], r["width"]) for r in rows if r["site"] == site]
        height, width = max(set(sizes), key=sizes.count)
        out.append((site, int(site.split("-")[1]), height, width))
    return out


def held_out(pool: Pool, labels: LabelStore, labeled: str) -> tuple[list[sqlite3.Row], dict[str, Any]]:
    """Return (held-out frame rows with a human label, their labels); ConfigError if there are none yet.

    ``labeled`` says how humans labeled them in the message ("human-labeled", "human-boxed").
    """
    rows = [r for r in pool.frames() if r["holdout"]]
    found = labels.labels([r["id"] for r in rows], source="human")
    rows = [r for r in rows if r["id"] in found]
    if not rows:
        raise ConfigError(
            f"evaluation.test_set: holdout: no {labeled} held-out frames yet "
            "(they come from the random calibration sample; run review first)"
        )
    return rows, found


def pick_test_set(registry: Mapping[str, Builder], name: str) -> Builder:
    """Return the builder of test set ``name``; ConfigError naming the known test sets if unknown."""
    if name not in registry:
        raise ConfigError(
            f"config/cloud.yaml: evaluation.test_set: unknown test set {name!r} (known: {', '.join(registry)})"
        )
    return registry[name]
