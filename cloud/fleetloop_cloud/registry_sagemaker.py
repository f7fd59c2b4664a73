"""The ``sagemaker`` registry backend: a :class:`~fleetloop_cloud.registry.StoreRegistry` whose versions
are also SageMaker Model Registry model packages.

The package files sit in an S3 store in the robots' layout, plus ``model.tar.gz`` beside them (the
manifest and every file it lists: what SageMaker extracts into /opt/ml/model for ``fleetloop-cloud
serve``), and one model package per version, its ``ModelDataUrl`` that tarball, in the group
``<prefix>-<name>`` (``create_model_package_group``, ``create_model_package`` with
``ModelApprovalStatus``, ``update_model_package`` to approve); in AWS the approval event (EventBridge
"SageMaker Model Package State Change") triggers the deployment.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

from fleetloop_core.contracts.manifest import Manifest
from fleetloop_core.errors import ConfigError
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.model_archive import ARCHIVE_NAME, pack_package
from fleetloop_cloud.registry import RegistryEntry, RegistryError, StoreRegistry


class SageMakerRegistry(StoreRegistry):
    """Package files in an S3 store; one SageMaker Model Registry package per version."""

    def __init__(
        self,
        store: ObjectStore,
        group_prefix: str,
        image_uri: str,
        client=None,
        signing_key: bytes | None = None,
        trusted=None,
        on_approved: list[Callable[[RegistryEntry], None]] | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
    ):
        super().__init__(store, signing_key, trusted, on_approved)
        if client is None:
            import boto3

            client = boto3.client("sagemaker", region_name=region, endpoint_url=endpoint_url)
        self.client = client
        self.group_prefix = group_prefix
        self.image_uri = image_uri

    def group(self, name: str) -> str:
        """Return the model package group of a package name."""
        return f"{self.group_prefix}-{name}"[:63]

    def _call(self, operation: str, **kwargs):
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:  # botocore ClientError / ParamValidationError / connection errors
            raise RegistryError(f"SageMaker Model Registry: {operation} failed ({exc})") from exc

    def _ensure_group(self, name: str) -> None:
        from botocore.exceptions import ClientError

        group = self.group(name)
        try:
            self.client.describe_model_package_group(ModelPackageGroupName=group)
            return
        except ClientError:
            pass
        self._call(
            "create_model_package_group",
            ModelPackageGroupName=group,
            ModelPackageGroupDescription=f"FleetLoop model {name}: signed packages under models/{name}/",
        )

    def _metadata(self, entry: RegistryEntry) -> dict:
        return {
            "fleetloop-name": entry.name,
            "fleetloop-version": entry.version,
            "fleetloop-tier": entry.tier,
            "fleetloop-sha256": entry.sha256,
            "fleetloop-key-id": entry.key_id or "unsigned",
        }

    def archive_key(self, name: str, version: str) -> str:
        """Return the store key of a version's model.tar.gz (next to its files)."""
        return f"{self.prefix(name, version)}/{ARCHIVE_NAME}"

    def _after_publish(self, entry: RegistryEntry, manifest: Manifest, package_dir: Path) -> None:
        if not self.image_uri:
            raise ConfigError("config/cloud.yaml: registry.sagemaker.image_uri must be set for the sagemaker registry")
        self._ensure_group(entry.name)
        # SageMaker hands ModelDataUrl to the container as a model.tar.gz extracted into /opt/ml/model:
        # the signed manifest and every file it lists, so `fleetloop-cloud serve` loads it as it is
        key = self.archive_key(entry.name, entry.version)
        with tempfile.TemporaryDirectory() as scratch:
            self.store.put_file(key, pack_package(package_dir, Path(scratch) / ARCHIVE_NAME))
        response = self._call(
            "create_model_package",
            ModelPackageGroupName=self.group(entry.name),
            ModelPackageDescription=f"{entry.name} {entry.version} ({entry.tier})",
            InferenceSpecification={
                "Containers": [{"Image": self.image_uri, "ModelDataUrl": self.store.url(key)}],
                "SupportedContentTypes": ["application/x-image"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            ModelApprovalStatus=entry.status,
            CustomerMetadataProperties=self._metadata(entry),
        )
        entry.arn = response["ModelPackageArn"]

    def _after_status(self, entry: RegistryEntry, reason: str) -> None:
        if not entry.arn:
            raise RegistryError(f"{entry.name} {entry.version}: no SageMaker model package ARN recorded")
        self._call(
            "update_model_package",
            ModelPackageArn=entry.arn,
            ModelApprovalStatus=entry.status,
            ApprovalDescription=reason[:1000] or entry.status,
            CustomerMetadataProperties=self._metadata(entry),
        )

    def approved_in_sagemaker(self, name: str) -> Optional[str]:
        """Return the newest Approved version of ``name`` according to the Model Registry itself."""
        response = self._call(
            "list_model_packages",
            ModelPackageGroupName=self.group(name),
            ModelApprovalStatus="Approved",
            SortBy="CreationTime",
            SortOrder="Descending",
        )
        for summary in response.get("ModelPackageSummaryList", []):
            described = self._call("describe_model_package", ModelPackageName=summary["ModelPackageArn"])
            version = (described.get("CustomerMetadataProperties") or {}).get("fleetloop-version")
            if version:
                return version
        return None


__all__ = ["SageMakerRegistry"]
