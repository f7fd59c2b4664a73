"""Which DDS transport the robot's processes use, as the environment Fast DDS reads at start-up.

ROS 2's default middleware here is Fast DDS (rmw_fastrtps). It reads its transport and profile
settings from the environment when the first participant is created, i.e. when rclpy initialises:
after that a change does nothing. The robot YAML's ``dds`` section (``/**`` ->
``ros__parameters`` -> ``dds``) and the launch arguments ``transport:=`` / ``type_propagation:=``
choose them; :func:`dds_environment` turns the choice into those variables, once, before rclpy.

Measured on this machine (docs/ros_robustness.md has the tables):

* ``shm`` (the default): shared memory with 8.5 MB segments (what LARGE_DATA gives its shared
  memory) for Fast DDS peers on the same host, and UDPv4 for discovery and every other peer,
  written as an XML profile. 640x480 rgb8 at 30 Hz arrives whole between processes (150/150,
  best effort and reliable); another vendor's camera is reached over UDP.
* ``large_data``: Fast DDS's LARGE_DATA builtin transports (TCP + shared memory for user data, UDP
  only for participant discovery). Whole frames too, but no other vendor speaks Fast DDS's TCP, and
  measured: a long-lived peer failed to discover a newly started robot in 3 of 40 starts (shm: 0
  of 80) -- stale TCP channels of processes that went away, fixed in Fast DDS 3.2.5 (#6421),
  not in the 3.2.3 of these wheels.
* ``udp``: UDPv4 only: every vendor speaks it; large frames travel as ~15 fragments each and are
  lost under load (best effort) or resent (reliable).
* ``default``: Fast DDS's built-in default (UDPv4 + shared memory with 512 kB segments: a 640x480
  frame does not fit, so it goes over UDP).

``type_propagation: false`` stops Fast DDS from announcing XTypes type information. Cyclone DDS
refuses to match a Fast DDS reader whose type information it cannot reconcile with its own
(measured: Fast DDS counts the writer matched, Cyclone does not, and no frame arrives); without
it the two match by type name, as ROS 2 types always did. Fast DDS has no environment variable
for it, so it goes into the generated XML profile (``FASTDDS_DEFAULT_PROFILES_FILE``) as the
participant property ``fastdds.type_propagation=disabled``. With the default transport, that
is the one switch a camera of another DDS vendor needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, MutableMapping

from fleetloop_core.config import ConfigModel

log = logging.getLogger("fleetloop.dds")

Transport = Literal["large_data", "udp", "shm", "default"]
TRANSPORTS: dict[str, str] = {  # our name -> FASTDDS_BUILTIN_TRANSPORTS value ("": our XML profile)
    "shm": "",
    "large_data": "LARGE_DATA",
    "udp": "UDPv4",
    "default": "DEFAULT",
}
SHM_SEGMENT_BYTES = 8500 * 1024  # what Fast DDS's LARGE_DATA gives its shared memory: ~9 640x480 frames
SHM_PORT_QUEUE = 8500  # messages a port holds (LARGE_DATA: segment / 1 kB mean message)
TRANSPORT_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"
PROFILES_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
TYPE_PROPAGATION_PROPERTY = "fastdds.type_propagation"
PROFILE_DIR_NAME = "fleetloop-dds"  # our generated profiles live in <tmp>/fleetloop-dds/


class DdsConfig(ConfigModel):
    """The robot's DDS transport and whether Fast DDS announces XTypes type information."""

    transport: Transport = "shm"
    type_propagation: bool = True


def environment_transport(environ: MutableMapping[str, str] | None = None) -> Transport:
    """Return our name of the transport the environment sets (FASTDDS_BUILTIN_TRANSPORTS); shm when none."""
    environ = os.environ if environ is None else environ
    value = environ.get(TRANSPORT_VARIABLE, "")
    for name, variable in TRANSPORTS.items():
        if variable and variable == value:
            return name  # type: ignore[return-value]
    return "shm"


def profile_xml(config: DdsConfig) -> str:
    """Return the Fast DDS XML profile for what no environment variable can say (shm transport, type propagation)."""
    value = "enabled" if config.type_propagation else "disabled"
    descriptors = transports = ""
    if config.transport == "shm":
        descriptors = f"""
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>fleetloop_shm</transport_id>
        <type>SHM</type>
        <segment_size>{SHM_SEGMENT_BYTES}</segment_size>
        <port_queue_capacity>{SHM_PORT_QUEUE}</port_queue_capacity>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>fleetloop_udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>"""
        transports = """
        <userTransports>
          <transport_id>fleetloop_shm</transport_id>
          <transport_id>fleetloop_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>"""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<!-- written by FleetLoop (fleetloop_core.dds) from the robot YAML's dds section -->
<dds xmlns="http://www.eprosima.com">
  <profiles>{descriptors}
    <participant profile_name="fleetloop_robot" is_default_profile="true">
      <rtps>{transports}
        <propertiesPolicy>
          <properties>
            <property>
              <name>{TYPE_PROPAGATION_PROPERTY}</name>
              <value>{value}</value>
            </property>
          </properties>
        </propertiesPolicy>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def write_profile(config: DdsConfig, directory: str | Path | None = None) -> Path:
    """Write the profile for ``config`` (named by its content, written atomically); return its path."""
    text = profile_xml(config)
    directory = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / PROFILE_DIR_NAME
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"profile-{hashlib.sha256(text.encode()).hexdigest()[:12]}.xml"
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return path


def dds_environment(
    config: DdsConfig, environ: MutableMapping[str, str] | None = None, profile_dir: str | Path | None = None
) -> dict[str, str]:
    """Return the variables that make Fast DDS use ``config`` (and set them in ``environ`` when given).

    The YAML wins over a transport variable already in the environment (a warning names both; with
    ``shm`` the variable is removed: the profile names the transports). A profile file the user
    named in the environment is kept when the choice needs no profile of ours; when it does, ours
    replaces it and a warning says so.
    """
    variable = TRANSPORTS[config.transport]
    values: dict[str, str] = {TRANSPORT_VARIABLE: variable} if variable else {}
    if config.transport == "shm" or not config.type_propagation:
        values[PROFILES_VARIABLE] = str(write_profile(config, profile_dir))
    if environ is not None:
        previous = environ.get(TRANSPORT_VARIABLE)
        if previous and previous != variable:
            log.warning(
                "%s was %s; the robot's dds.transport %s %s",
                TRANSPORT_VARIABLE,
                previous,
                config.transport,
                f"sets {variable}" if variable else "uses FleetLoop's profile instead",
            )
        named = environ.get(PROFILES_VARIABLE)
        ours = named is not None and Path(named).parent.name == PROFILE_DIR_NAME
        if named and not ours and PROFILES_VARIABLE in values:
            log.warning(
                "%s=%s replaced by FleetLoop's profile for dds %s (with transport default and "
                "type_propagation true your own profile is kept)",
                PROFILES_VARIABLE,
                named,
                config.model_dump(),
            )
        if ours and PROFILES_VARIABLE not in values:
            environ.pop(PROFILES_VARIABLE)  # a parent's choice of ours must not override this one
        if not variable:
            environ.pop(TRANSPORT_VARIABLE, None)
        environ.update(values)
    return values


@contextmanager
def dds_environment_during(config: DdsConfig | None) -> Iterator[None]:
    """Set the environment for ``config`` in this process while the block runs (a participant is created in
    it: Fast DDS reads the variables then), and put the previous values back after. None: no change.

    Limit: Fast DDS loads XML profiles once per process. Once a participant here was created with our
    profile (the ``shm`` transport), later ones get that profile whatever the environment says; a
    participant that must be on ``large_data`` after that needs a process of its own (measured in
    benchmarks/ros_stress.py: an in-process LARGE_DATA collector received nothing).
    """
    saved = {key: os.environ.get(key) for key in (TRANSPORT_VARIABLE, PROFILES_VARIABLE)}
    try:
        if config is not None:
            dds_environment(config, os.environ)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
