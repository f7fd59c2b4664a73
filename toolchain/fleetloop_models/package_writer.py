"""Writing a model package: the ONNX graph (exported by the task's trainer), the torch weights, the manifest."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fleetloop_core.contracts.manifest import (
    TIER_PLACEMENT,
    InputSpec,
    Manifest,
    Resize,
    TaskName,
    Tier,
    file_entry,
    write_manifest,
)

if TYPE_CHECKING:
    from fleetloop_models.training import PixelInput

WEIGHTS_FILE = "weights.pt"  # torch state dict beside the ONNX graph (role "extra" in the manifest)


def write_package(
    model: PixelInput,
    directory: Path,
    export: Callable[[Path], Path],
    *,
    name: str,
    version: str,
    tier: Tier,
    task: TaskName,
    architecture: str,
    labels: Sequence[str],
    input_size: tuple[int, int],
    resize: Resize,
    training: dict[str, Any],
    parameters: int | None = None,
    metrics: dict[str, Any] | None = None,
    weights: bool = True,
    **task_fields: Any,
) -> Manifest:
    """Write a package: ``export(directory / "model.onnx")``, the torch weights, manifest.json; return the manifest.

    ``model``: a deployable wrapper (``fleetloop_models.trainers``); ``input_size``: (height, width);
    ``weights``: also write the torch state dict (``weights.pt``, the cloud's warm start);
    ``task_fields``: the manifest's task-specific blocks (``outputs``, ``detection``).
    """
    # ~64 lines: a manifest's every field, keyword by keyword, so each task's writer passes only its own
    import torch

    from fleetloop_models.zoo import parameter_count

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = export(directory / "model.onnx")
    files = [file_entry(onnx_path, directory)]
    if weights:
        weights_path = directory / WEIGHTS_FILE  # travels with the package: the cloud warm-starts from it
        torch.save(model.state_dict(), weights_path)
        files.append(file_entry(weights_path, directory, role="extra"))
    height, width = input_size
    manifest = Manifest(
        name=name,
        version=version,
        tier=tier,
        task=task,
        placement=TIER_PLACEMENT[tier],
        input=InputSpec(
            shape=[-1, height, width, 3],
            dtype="uint8",
            layout="NHWC",
            color_order="RGB",
            mean=list(model.mean),
            std=list(model.std),
            normalisation_in_graph=True,
            resize=resize,
        ),
        labels=list(labels),
        files=files,
        parameters=parameter_count(model.net) if parameters is None else parameters,
        architecture=architecture,
        training=training,
        metrics=metrics or {},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **task_fields,
    )
    write_manifest(manifest, directory)
    return manifest
