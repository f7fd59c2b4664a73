"""``fleetloop models build|keygen|sign|verify``: reference tiers and signed model packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop_core.contracts.manifest import Manifest


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("models", help="build, sign and verify model packages")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    build = actions.add_parser("build", help="train the four reference tiers and export ONNX + manifests")
    build.add_argument("--out", default="models", help="output directory (default: models)")
    build.add_argument(
        "--profile",
        default="default",
        help="profile in config/models.yaml (default, test, detection-default, detection-test)",
    )
    build.add_argument("--config", default=None, help="models config file (default: config/models.yaml)")
    build.add_argument("--tiers", default=None, help="comma-separated tiers to build (default: the profile's)")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)
    keygen = actions.add_parser("keygen", help="create an Ed25519 signing key pair (NAME.key, NAME.pub)")
    keygen.add_argument("--out", default="keys", help="directory for the key files (default: keys)")
    keygen.add_argument("--name", default="signing", help="file stem (default: signing)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.set_defaults(handler=_keygen)
    sign = actions.add_parser("sign", help="sign a model package directory (rewrites its manifest.json)")
    sign.add_argument("package", help="package directory (manifest.json + files)")
    sign.add_argument("--key", required=True, help="Ed25519 private key PEM file")
    sign.set_defaults(handler=_sign)
    verify = actions.add_parser("verify", help="check a package's signature, sizes and sha256")
    verify.add_argument("package", help="package directory (manifest.json + files)")
    verify.add_argument(
        "--trusted", required=True, help="directory of trusted *.pub keys, or a YAML file with trusted_keys"
    )
    verify.set_defaults(handler=_verify)

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)


def _build(args: argparse.Namespace) -> int:
    from fleetloop_core.contracts.manifest import load_manifest
    from fleetloop_models.modelbuild import build_reference_models

    tiers = tuple(t.strip().upper() for t in args.tiers.split(",") if t.strip()) if args.tiers else None
    dirs = build_reference_models(
        args.out, args.profile, args.config, tiers=tiers, progress=not args.no_progress, force=args.force
    )
    rows = []
    for tier, directory in dirs.items():
        manifest = load_manifest(directory)
        rows.append(
            {
                "tier": tier,
                "name": manifest.name,
                "version": manifest.version,
                "parameters": manifest.parameters,
                "train_seconds": manifest.training.get("seconds"),
                "lab_acc": manifest.metrics.get("lab_test_accuracy"),
                "field_acc": manifest.metrics.get("field_test_accuracy"),
                "dir": str(Path(directory)),
            }
        )
        if manifest.detection is not None:  # detectors (only they carry the block): mAP instead of accuracy
            rows[-1].update(
                task="detection",
                layout=manifest.detection.layout,
                lab_map50=manifest.metrics.get("lab_test_map50"),
                field_map50=manifest.metrics.get("field_test_map50"),
                field_map=manifest.metrics.get("field_test_map"),
            )
            for key in ("lab_acc", "field_acc"):
                rows[-1].pop(key)
    for row in rows:
        print(json.dumps(row))
    return 0


def _keygen(args: argparse.Namespace) -> int:
    import os

    from fleetloop_core.errors import ConfigError
    from fleetloop_core.signing import generate_keypair, key_id

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    if not args.force and (private_path.exists() or public_path.exists()):
        raise ConfigError(f"{private_path}: key files exist already (use --force to overwrite)")
    private_pem, public_pem = generate_keypair()
    # the private key is created 0600 so it is never readable by others, even for a moment
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    print(json.dumps({"key_id": key_id(public_pem), "private_key": str(private_path), "public_key": str(public_path)}))
    return 0


def _sign(args: argparse.Namespace) -> int:
    from fleetloop_core.errors import ConfigError
    from fleetloop_core.signing import sign_package

    try:
        private_pem = Path(args.key).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{args.key}: cannot read private key ({exc.strerror or exc})") from None
    manifest = sign_package(args.package, private_pem)
    print(
        json.dumps(
            {
                "package": args.package,
                "name": manifest.name,
                "version": manifest.version,
                "key_id": _key_id(manifest),
            }
        )
    )
    return 0


def _key_id(manifest: Manifest) -> str:
    """Return the id of the key that signed ``manifest`` (signing and verifying return signed manifests only)."""
    from fleetloop_core.signing import SignatureError

    if manifest.signature is None:
        raise SignatureError(f"{manifest.name} {manifest.version}: unsigned (no signature field)")
    return manifest.signature.key_id


def _verify(args: argparse.Namespace) -> int:
    from fleetloop_core.signing import TrustedKeys, verify_package

    manifest = verify_package(args.package, TrustedKeys.load(args.trusted))
    print(
        json.dumps(
            {
                "package": args.package,
                "name": manifest.name,
                "version": manifest.version,
                "key_id": _key_id(manifest),
                "verified": True,
            }
        )
    )
    return 0
