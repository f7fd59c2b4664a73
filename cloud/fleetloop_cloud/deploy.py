"""The deploy step: its config, the job backends by URI, rollouts of a round's approved packages, its commands.

Job backends (:class:`~fleetloop_cloud.fleet_jobs.FleetJobs`), picked by URI (:func:`open_fleet_jobs`):

* ``file:///dir``   the local job directory the robots' ``local`` control plane watches (embedded default,
  ``job_service_local``)
* ``mqtts://host:port``   our own job service speaking the AWS IoT Jobs MQTT protocol
  (``fleetloop_core.contracts.iot_jobs``) over a real broker with mutual TLS (``job_service_mqtt``);
  ``jobs:///path.sqlite`` the job store a standing ``fleetloop-cloud jobs serve`` answers from
* ``iot://`` (``?region=..&endpoint_url=..``)   AWS IoT Jobs via boto3 ``iot.create_job`` (``job_service_aws``)

How a rollout goes (canaries, abort, roll back) is :mod:`fleetloop_cloud.rollout`.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlparse

from pydantic import Field

from fleetloop_core.config import ConfigModel, default_config_path, load_config
from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest, parse_manifest
from fleetloop_core.model_store import package_prefix

from fleetloop_cloud.fleet_jobs import DeployError, FleetJobs, RolloutConfig, deploy_document
from fleetloop_cloud.job_service_aws import AwsIotJobs
from fleetloop_cloud.job_service_local import LocalDirJobs
from fleetloop_cloud.job_service_mqtt import MqttJobService, StoreJobs
from fleetloop_cloud.rollout import rollout

log = logging.getLogger(__name__)


# ====================================================================================== config
class DeployConfig(ConfigModel):
    """Backend and rollout."""

    backend: str = "file:///var/lib/fleetloop/jobs"
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)


def load_deploy_config(path: str | Path | None = None) -> DeployConfig:
    """Return config/deploy.yaml (or ``path``) validated."""
    return load_config(DeployConfig, path or default_config_path("deploy.yaml"))


# ====================================================================================== backends
def _local(uri: str, **_options: str) -> LocalDirJobs:
    return LocalDirJobs(unquote(urlparse(uri).path))


JOB_BACKENDS: dict[str, Callable[..., FleetJobs]] = {
    "file": _local,
    "mqtts": MqttJobService.from_uri,
    "jobs": StoreJobs.from_uri,
    "iot": AwsIotJobs.from_uri,
}


def open_fleet_jobs(uri: str, source: str = "deploy.backend", **options: str) -> FleetJobs:
    """Return the job backend for ``uri`` (file:///dir, mqtts://host:port?ca_file=..., iot://?region=...)."""
    scheme = urlparse(uri).scheme
    factory = JOB_BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(f"{source}: {uri!r} has unknown scheme {scheme!r} (known: {', '.join(sorted(JOB_BACKENDS))})")
    return factory(uri, **options)


# ====================================================================================== approved packages
def approved_edge_packages(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the Approved edge packages (T4, T3) among a round's registry ``entries``, in rollout order."""
    approved = [e for e in entries if e.get("status") == "Approved" and e.get("variant") in ("T4", "T3")]
    return sorted(approved, key=lambda e: e["variant"], reverse=True)


def deploy_approved(
    jobs: FleetJobs,
    registry_store,
    store_uri: str,
    robots: Sequence[str],
    entries: Sequence[dict[str, Any]],
    job_prefix: str,
    config: RolloutConfig | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Roll out a round's Approved edge packages (T4 first, then T3; canaries first) to ``robots``.

    ``entries``: the round's registry entries (``name``, ``version``, ``variant``, ``status``);
    ``registry_store``: the store the registry keeps packages in (``store_uri``), read for the manifest the
    job pins. Returns one record per rollout: round tier, version, aborted, seconds and the report;
    ``on_record`` gets each as its rollout ends.
    """
    records = []
    for entry in approved_edge_packages(entries):
        prefix = package_prefix(entry["name"], entry["version"])
        manifest_bytes = registry_store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
        manifest = parse_manifest(json.loads(manifest_bytes), f"{store_uri}/{prefix}")
        job_id = f"{job_prefix}-{entry['variant']}-{entry['version']}".replace(".", "-")
        started = time.perf_counter()
        record = {"tier": entry["variant"], "version": entry["version"]}
        try:
            report = rollout(jobs, robots, deploy_document(manifest, store_uri, prefix, manifest_bytes), job_id, config)
            record.update(aborted=bool(report.aborted), report=report.to_dict())
        except FleetLoopError as exc:
            log.error("rollout of %s failed: %s", job_id, exc)
            record.update(aborted=True, error=str(exc))
        record["seconds"] = round(time.perf_counter() - started, 2)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


# ====================================================================================== CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop-cloud deploy publish|rollout``."""
    parser = subparsers.add_parser("deploy", help="publish signed model packages and roll them out to the fleet")
    actions = parser.add_subparsers(dest="deploy_command", metavar="ACTION")
    publish = actions.add_parser("publish", help="upload a signed package to models/<name>/<version>/ in a store")
    publish.add_argument("package", help="package directory (signed manifest.json + files)")
    publish.add_argument("--store", required=True, help="object store URI (file:///dir or s3://bucket/prefix)")
    publish.add_argument("--trusted", required=True, help="trusted keys (directory of *.pub or YAML): checked first")
    publish.set_defaults(handler=_publish)
    run = actions.add_parser("rollout", help="canary then fleet rollout of a published package")
    run.add_argument("package", help="the signed package directory (its manifest names the model)")
    run.add_argument("--store", required=True, help="object store URI the robots fetch from")
    run.add_argument("--things", required=True, help="comma-separated robot (thing) names, canaries first")
    run.add_argument("--canaries", default=None, help="comma-separated canary names (default: the first k)")
    run.add_argument("--thing-group", default=None, help="AWS IoT thing group for the fleet phase")
    run.add_argument("--backend", default=None, help="job backend URI (default: config/deploy.yaml backend)")
    run.add_argument("--config", default=None, help="deploy config (default: config/deploy.yaml)")
    run.add_argument("--job-id", default=None, help="job id stem (default: model name, version and a nonce)")
    run.add_argument("--previous-version", default="previous", help="version canaries roll back to on abort")
    run.add_argument("--report", default=None, help="write the rollout report (JSON) here")
    run.set_defaults(handler=_rollout)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _publish(args: argparse.Namespace) -> int:
    from fleetloop_core.model_store import publish_package
    from fleetloop_core.signing import TrustedKeys, verify_package

    manifest = verify_package(args.package, TrustedKeys.load(args.trusted))
    prefix = publish_package(args.package, args.store)
    print(json.dumps({"name": manifest.name, "version": manifest.version, "store": args.store, "prefix": prefix}))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    config = load_deploy_config(args.config)
    manifest = load_manifest(args.package)
    if manifest.signature is None:
        raise DeployError(f"{args.package}: package is unsigned; run fleetloop models sign first")
    document = deploy_document(
        manifest,
        args.store,
        package_prefix(manifest.name, manifest.version),
        (Path(args.package) / MANIFEST_NAME).read_bytes(),
    )
    things = [t.strip() for t in args.things.split(",") if t.strip()]
    canaries = [t.strip() for t in args.canaries.split(",")] if args.canaries else None
    job_id = args.job_id or f"{manifest.name}-{manifest.version}-{uuid.uuid4().hex[:6]}".replace(".", "_")
    jobs = open_fleet_jobs(args.backend or config.backend)
    try:
        report = rollout(
            jobs,
            things,
            document,
            job_id,
            config.rollout,
            canaries=canaries,
            previous_version=args.previous_version,
            fleet_group=args.thing_group,
            progress=print,
        )
    finally:
        jobs.close()
    data = report.to_dict()
    if args.report:
        Path(args.report).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"succeeded": report.succeeded, "aborted": report.aborted, "reason": report.reason}))
    return 0 if report.succeeded else 1


def register_jobs(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop-cloud jobs serve``: our IoT Jobs service as a standing process."""
    parser = subparsers.add_parser("jobs", help="our IoT Jobs service (MQTT) as a standing process")
    actions = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    serve = actions.add_parser("serve", help="answer robots' IoT Jobs requests from a job store until stopped")
    serve.add_argument(
        "--broker", required=True, help="mqtts://host:port?ca_file=...&cert_file=...&key_file=...[&topic_prefix=...]"
    )
    serve.add_argument("--store", required=True, help="job store file (SQLite); rollouts use --backend jobs://PATH")
    serve.set_defaults(handler=_serve_jobs)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _serve_jobs(args: argparse.Namespace) -> int:
    import signal

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    service = MqttJobService.from_uri(args.broker, store=args.store)
    try:
        pending = service.store.things_with_pending()
        print(
            f"job service up: {service.uri}, store {service.store.path}, "
            f"{len(pending)} thing(s) with pending executions",
            flush=True,
        )
        stop.wait()
    finally:
        service.close()
        service.store.close()
    return 0
