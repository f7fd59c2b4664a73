"""``--control-plane mqtt``: a local mosquitto with mutual TLS for the demo's fleet.

One CA; a certificate per robot (CN = thing name) and one for the cloud's job service. Returns
what the robots' control-plane config and the job service need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fleetloop_cloud.broker import CLOUD_IDENTITY, CertificateAuthority, MosquittoBroker


def start_broker(directory: Path, robot_ids: Sequence[str]) -> tuple[MosquittoBroker, dict]:
    """Start mosquitto (mTLS, free port); return it and {endpoint, service options, robot mqtt sections}."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(directory / "pki")
    broker = MosquittoBroker(directory, ca)
    broker.start()
    cloud = broker.client(CLOUD_IDENTITY)
    robots = {}
    for robot_id in robot_ids:
        identity = broker.client(robot_id)
        robots[robot_id] = {
            "ca_file": str(identity.ca),
            "cert_file": str(identity.cert),
            "key_file": str(identity.key),
            "topic_prefix": "$aws",
        }
    return broker, {
        "endpoint": f"mqtts://{broker.host}:{broker.port}",
        "service": {"ca_file": str(cloud.ca), "cert_file": str(cloud.cert), "key_file": str(cloud.key)},
        "robot": robots,
    }
