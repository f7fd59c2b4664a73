"""The SageMaker training-container contract, read from the files SageMaker itself writes.

SageMaker starts the image as ``docker run IMAGE train`` and lays out, on every host
(AWS, "How Amazon SageMaker Provides Training Information" and "Distributed Training
Configuration" in the SageMaker developer guide)::

    /opt/ml/input/config/hyperparameters.json   {"name": "value", ...}   every value a string
    /opt/ml/input/config/inputdataconfig.json   {"<channel>": {"ContentType": ..., "TrainingInputMode": "File",
                                                               "S3DistributionType": ..., "RecordWrapperType": ...}}
    /opt/ml/input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"],
                                                 "network_interface_name": "eth0", ...}
    /opt/ml/input/data/<channel>/               the channel's files (File and FastFile modes)
    /opt/ml/model/                              collected as model.tar.gz after exit
    /opt/ml/output/failure                      its first 1024 characters become FailureReason

The ``SM_*`` variables (``SM_MODEL_DIR``, ``SM_OUTPUT_DIR``, ``SM_CHANNEL_<NAME>``, ``SM_HOSTS``,
``SM_CURRENT_HOST``) are *not* part of that contract: the sagemaker-training toolkit sets them, and
our image does not install it. They are honoured only as overrides where they are set.

The root is relocatable (``--ml-root`` / ``FLEETLOOP_ML_ROOT``) so that the local training backend
and the tests lay out the same tree anywhere; :func:`write_job_tree` writes it as SageMaker does.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from fleetloop_core.errors import ConfigError

log = logging.getLogger("fleetloop_cloud.sagemaker_job")

ML_ROOT = "/opt/ml"
ROOT_VARIABLE = "FLEETLOOP_ML_ROOT"
READABLE_MODES = ("File", "FastFile")  # both present the channel as files; Pipe streams a FIFO


def _natural(host: str) -> tuple:
    """Sort key that puts algo-2 before algo-10 (every host sorts the same list the same way)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", host))


@dataclass
class Cluster:
    """This process's place among the training hosts (``resourceconfig.json``)."""

    hosts: list[str]
    current: str
    network_interface: str | None = None

    def __post_init__(self):
        if not self.hosts:
            raise ConfigError("resourceconfig.json: hosts is empty")
        if self.current not in self.hosts:
            raise ConfigError(f"resourceconfig.json: current_host {self.current!r} is not in hosts {self.hosts}")
        self.hosts = sorted(self.hosts, key=_natural)

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def master(self) -> str:
        """The host every rank connects to for the process group (rank 0)."""
        return self.hosts[0]


@dataclass
class Channel:
    """One input channel as ``inputdataconfig.json`` describes it."""

    name: str
    path: Path
    content_type: str | None = None
    input_mode: str = "File"


@dataclass
class JobEnvironment:
    """Everything the entry point needs, read from a SageMaker job tree (SM_* override where set)."""

    root: Path
    hyperparameters_path: Path
    hyperparameters: dict
    channels: dict[str, Channel]
    cluster: Cluster
    model_dir: Path
    output_dir: Path
    overrides: list[str] = field(default_factory=list)  # the SM_* variables that were applied

    @property
    def failure_path(self) -> Path:
        return self.output_dir / "failure"

    def channel_path(self, name: str) -> Path | None:
        channel = self.channels.get(name)
        return channel.path if channel else None


def _read_json(path: Path, what: str, required: bool):
    if not path.is_file():
        if required:
            raise ConfigError(f"{path}: missing ({what}); is this a SageMaker training job tree?")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from None


def default_root(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(ROOT_VARIABLE) or ML_ROOT)


def _channels(
    config_dir: Path, data_dir: Path, environ: Mapping[str, str], known_channels: tuple[str, ...], overrides: list[str]
) -> dict[str, Channel]:
    """Return the job's input channels (inputdataconfig.json, unlisted directories, SM_CHANNEL_* overrides)."""
    described = _read_json(config_dir / "inputdataconfig.json", "the input channels", required=False) or {}
    if not isinstance(described, dict):
        raise ConfigError(f"{config_dir / 'inputdataconfig.json'}: expected a JSON object of channel -> settings")
    channels: dict[str, Channel] = {}
    for name, settings in described.items():
        settings = settings if isinstance(settings, dict) else {}
        mode = settings.get("TrainingInputMode", "File")
        if mode not in READABLE_MODES:
            raise ConfigError(
                f"{config_dir / 'inputdataconfig.json'}: channel {name!r} uses TrainingInputMode "
                f"{mode!r}; this image reads channels as files ({' or '.join(READABLE_MODES)})"
            )
        channels[name] = Channel(name, data_dir / name, settings.get("ContentType"), mode)
    if data_dir.is_dir():
        for directory in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name not in channels):
            channels[directory.name] = Channel(directory.name, directory)
    for key, value in environ.items():
        if key.startswith("SM_CHANNEL_") and value:
            name = key[len("SM_CHANNEL_") :].lower()
            channels[name] = Channel(name, Path(value), channels[name].content_type if name in channels else None)
            overrides.append(key)
    if known_channels:
        for name in [n for n in channels if n not in known_channels]:
            log.warning("channel %r is not one this job reads (%s); ignored", name, ", ".join(known_channels))
            del channels[name]
    for channel in channels.values():
        if not channel.path.is_dir():
            raise ConfigError(f"channel {channel.name!r}: directory {channel.path} does not exist")
    return channels


def _cluster(config_dir: Path, environ: Mapping[str, str], overrides: list[str]) -> Cluster:
    """Return the training hosts and this one (resourceconfig.json; SM_HOSTS / SM_CURRENT_HOST override)."""
    resources = _read_json(config_dir / "resourceconfig.json", "the training hosts", required=False) or {}
    hosts = list(resources.get("hosts") or ["algo-1"])
    current = resources.get("current_host") or hosts[0]
    if environ.get("SM_HOSTS"):
        try:
            hosts = list(json.loads(environ["SM_HOSTS"]))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SM_HOSTS: not a JSON list of host names ({exc})") from None
        overrides.append("SM_HOSTS")
    if environ.get("SM_CURRENT_HOST"):
        current = environ["SM_CURRENT_HOST"]
        overrides.append("SM_CURRENT_HOST")
    return Cluster(hosts=hosts, current=current, network_interface=resources.get("network_interface_name"))


def read_job(
    root: Path | None = None, environ: Mapping[str, str] = os.environ, known_channels: tuple[str, ...] = ()
) -> JobEnvironment:
    """Return the job as SageMaker laid it out under ``root`` (default /opt/ml).

    Channels: every entry of inputdataconfig.json (its directory must exist and be readable as
    files), plus any directory under input/data that the file does not list (a job tree written
    without the file); ``SM_CHANNEL_<NAME>`` replaces a channel's directory. Hosts and rank come from
    resourceconfig.json (absent: one host, ``algo-1``); ``SM_HOSTS``/``SM_CURRENT_HOST`` override.
    Channels outside ``known_channels`` (when given) are logged and ignored.
    """
    root = Path(root) if root is not None else default_root(environ)
    config_dir, data_dir = root / "input" / "config", root / "input" / "data"
    overrides: list[str] = []

    hp_path = config_dir / "hyperparameters.json"
    hyperparameters = _read_json(hp_path, "the job's hyperparameters", required=True)
    if not isinstance(hyperparameters, dict):
        raise ConfigError(f"{hp_path}: expected a JSON object of name -> value")

    channels = _channels(config_dir, data_dir, environ, known_channels, overrides)
    cluster = _cluster(config_dir, environ, overrides)
    model_dir = Path(environ.get("SM_MODEL_DIR") or root / "model")
    output_dir = Path(environ.get("SM_OUTPUT_DIR") or root / "output")
    overrides += [k for k in ("SM_MODEL_DIR", "SM_OUTPUT_DIR") if environ.get(k)]
    return JobEnvironment(
        root=root,
        hyperparameters_path=hp_path,
        hyperparameters=hyperparameters,
        channels=channels,
        cluster=cluster,
        model_dir=model_dir,
        output_dir=output_dir,
        overrides=overrides,
    )


def write_job_tree(
    root: Path,
    hyperparameters: Mapping[str, object],
    channels: Mapping[str, Path],
    hosts: list[str] | None = None,
    current_host: str | None = None,
    content_types: Mapping[str, str] | None = None,
    network_interface: str | None = None,
) -> Path:
    """Lay out ``root`` as SageMaker lays out /opt/ml for one host; return ``root``.

    Channel directories are linked in (SageMaker copies them; the entry point only reads).
    Hyperparameter values are written as strings, as SageMaker passes them.
    """
    hosts = list(hosts or ["algo-1"])
    config_dir, data_dir = root / "input" / "config", root / "input" / "data"
    for directory in (config_dir, data_dir, root / "model", root / "output"):
        directory.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(
        json.dumps({k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}, indent=2)
    )
    (config_dir / "inputdataconfig.json").write_text(
        json.dumps(
            {
                name: {
                    "ContentType": (content_types or {}).get(name, "application/octet-stream"),
                    "TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                }
                for name in channels
            },
            indent=2,
        )
    )
    resources = {
        "current_host": current_host or hosts[0],
        "hosts": hosts,
        "current_instance_type": "local",
        "current_group_name": "homogeneousCluster",
    }
    if network_interface:
        resources["network_interface_name"] = network_interface
    (config_dir / "resourceconfig.json").write_text(json.dumps(resources, indent=2))
    for name, source in channels.items():
        link = data_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(source).resolve(), target_is_directory=True)
    return root
