"""A local MQTT broker for the embedded control plane: Debian's mosquitto with mutual TLS.

The cloud's own job service (``fleetloop_cloud.job_service_mqtt.MqttJobService``) and the robots speak the
AWS IoT Jobs MQTT protocol through it, so the whole protocol runs end to end without AWS
(``fleetloop demo --control-plane mqtt``, and the tests). Certificates are made here with
``cryptography`` (EC P-256): one CA, a server certificate for 127.0.0.1/localhost, and client
certificates whose CN is the MQTT user name and, for robots, the IoT thing name. An ACL lets each
robot use only its own ``<prefix>/things/<CN>/...`` topics; the cloud identity may use all.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.stop_signals import end_with_parent_command

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class BrokerError(FleetLoopError):
    """mosquitto could not be started (message says why, with the broker log)."""


CLOUD_IDENTITY = "fleetloop-cloud"
TOPIC_PREFIXES = ("$aws", "fleetloop")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FleetLoop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class Identity:
    """A certificate and its key on disk (paths), plus the CA file the holder trusts."""

    name: str
    cert: Path
    key: Path
    ca: Path


class CertificateAuthority:
    """A throw-away CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, name: str = "FleetLoop local CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._name = _name(name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, server: bool = False) -> Identity:
        """Return a new certificate for ``common_name`` (a server certificate carries the loopback SANs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.directory / common_name
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return Identity(common_name, cert_path, key_path, self.ca_file)


class MosquittoBroker:
    """mosquitto with one mutual-TLS listener on 127.0.0.1; start/stop/restart on the same port."""

    def __init__(self, directory: Path, ca: CertificateAuthority, port: int | None = None):
        self.directory = Path(directory)
        self.ca = ca
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.server = ca.issue("localhost", server=True)
        self.log_path = self.directory / "mosquitto.log"
        self.config_path = self.directory / "mosquitto.conf"
        acl = self.directory / "acl"
        acl.write_text(
            f"user {CLOUD_IDENTITY}\n"
            + "".join(f"topic readwrite {p}/#\n" for p in TOPIC_PREFIXES)
            + "\n"
            + "".join(f"pattern readwrite {p}/things/%u/#\n" for p in TOPIC_PREFIXES)
        )
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {ca.ca_file}\ncertfile {self.server.cert}\nkeyfile {self.server.key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
            f"acl_file {acl}\npersistence false\n"
            # started as root, mosquitto would drop to user "mosquitto", who cannot read our temp files
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_dest file {self.log_path}\nlog_type all\nconnection_messages true\n"
        )
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and return once it accepts TCP connections."""
        if self._process is not None:
            return
        # the broker gets SIGTERM when the thread that started it dies, so a test run or demo killed without its
        # clean-up (SIGTERM to pytest, kill -9) leaves no broker behind (seen: a mosquitto from a pytest run
        # stopped by SIGTERM ran on as an orphan); start it from a thread that outlives it
        command = end_with_parent_command([MOSQUITTO, "-c", str(self.config_path)], signal.SIGTERM)
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self._process = None
                raise BrokerError(f"mosquitto exited at start: {err} {self.log()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def stop(self) -> None:
        """Stop mosquitto (clients see the connection drop)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, name: str) -> Identity:
        """Return a client identity (certificate from the broker's CA) whose CN is ``name``."""
        path = self.ca.directory / f"{name}.crt"
        if path.exists():
            return Identity(name, path, path.with_suffix(".key"), self.ca.ca_file)
        return self.ca.issue(name)

    def log(self) -> str:
        """Return the broker log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
