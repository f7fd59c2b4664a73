"""DDS settings that carry camera-sized images between processes without loss (FACTS.md).

With Fast DDS defaults a 640x480 rgb8 stream at 30 Hz lost ~half its frames between two
processes; the LARGE_DATA builtin transports delivered all of them. The launch files set the
same variables.
"""

from __future__ import annotations

import os

ROBOT_DDS_ENVIRONMENT = {
    "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
}


def apply_robot_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the DDS transport variables unless already set; return the resulting values."""
    environ = os.environ if environ is None else environ
    for key, value in ROBOT_DDS_ENVIRONMENT.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in ROBOT_DDS_ENVIRONMENT}
