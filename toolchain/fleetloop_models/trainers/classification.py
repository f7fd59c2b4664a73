"""Classification's trainer: the deployable classifier, its loss (cross-entropy and distillation), its export.

Exported graphs take raw uint8 NHWC pixels and normalise in the graph, and output
``probs`` (N, C), ``embedding`` (N, D, unit length) and ``uncertainty`` (N, 3) = entropy, margin and least
confidence exactly as ``fleetloop_core.uncertainty`` defines them, so the robot pays no Python
time for those scores. The loop, the schedule and the export machinery are ``fleetloop_models.training``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fleetloop_sim import dataset
from fleetloop_models import training, zoo
from fleetloop_core.contracts.manifest import Manifest, OutputSpec, TaskName, Tier
from fleetloop_models.modelbuild import TIER_NAMES, BuildProfile, TierBuild
from fleetloop_models.package_writer import write_package
from fleetloop_sim.sim_tasks import LabelledSet
from fleetloop_models.trainers import Trained, Trainer

if TYPE_CHECKING:
    from fleetloop_core.inference import TierModel

OUTPUTS = ("probs", "embedding", "uncertainty")
# the classes Fashion-MNIST's own benchmarks confuse most (upper-body garments), scored on their own
CONFUSABLE = ("t-shirt", "pullover", "coat", "shirt")


class UncertaintyHead(nn.Module):
    """Entropy, margin and least confidence of a probability batch, each in [0, 1]."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = int(classes)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        classes = self.classes
        entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(dim=1) / math.log(classes)
        top2 = torch.topk(probs, 2, dim=1).values
        margin = 1.0 - (top2[:, 0] - top2[:, 1])
        least = (1.0 - top2[:, 0]) * (classes / (classes - 1))
        return torch.stack([entropy, margin, least], dim=1).clamp(0.0, 1.0)


class Deployable(training.PixelInput):
    """A classifier wrapped for deployment: uint8 NHWC in; probs, embedding, uncertainty out."""

    net: zoo.TierNet

    def __init__(
        self,
        net: zoo.TierNet,
        mean: Sequence[float] = training.DEFAULT_MEAN,
        std: Sequence[float] = training.DEFAULT_STD,
    ):
        super().__init__(mean, std)
        self.net = net
        self.uncertainty = UncertaintyHead(net.head.out_features)

    def logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, embedding) for uint8 NHWC pixels."""
        return self.net.forward_logits(self.normalise(pixels))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, embedding = self.logits(pixels)
        probs = torch.softmax(logits, dim=1)
        # unit-length embeddings: cosine similarity on the robot is a single dot product
        return probs, F.normalize(embedding, dim=1, eps=1e-6), self.uncertainty(probs)


@dataclass
class FitConfig(training.Recipe):
    """How to train a classifier: the common recipe plus distillation (temperature, soft-target share)."""

    distil_temperature: float = 2.0
    distil_weight: float = 0.7  # share of the soft-target loss when hard labels exist too

    one_cycle_min_steps: ClassVar[int] = 8


def fit(
    model: Deployable,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    soft_targets: np.ndarray | None = None,
    config: FitConfig | None = None,
    desc: str = "train",
    progress: bool = True,
    sample_weights: np.ndarray | None = None,
) -> training.FitReport:
    """Train ``model`` in place on uint8 NHWC ``images``; return a FitReport.

    With ``labels`` only: cross-entropy. With ``soft_targets`` (N, C) probabilities: knowledge
    distillation (KL at ``distil_temperature``), mixed with cross-entropy where labels are given
    (label -1 means unlabelled: soft targets only).
    """
    config = config or FitConfig()
    if labels is None and soft_targets is None:
        raise ValueError("fit needs labels, soft targets, or both")
    if len(images) == 0:
        raise ValueError("fit got an empty training set")
    training.set_threads(config.threads)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.asarray(labels, np.int64)) if labels is not None else None
    s_all = torch.from_numpy(np.asarray(soft_targets, np.float32)) if soft_targets is not None else None
    w_all = torch.from_numpy(np.asarray(sample_weights, np.float32)) if sample_weights is not None else None
    temperature = config.distil_temperature

    def batch_loss(idx: torch.Tensor, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        x = x_all[idx].to(device)
        if config.flip:
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip.to(device)] = x[flip.to(device)].flip(2)
        logits, _ = model.logits(x)
        per_sample = torch.zeros(len(idx), device=device)
        if s_all is not None:
            soft = s_all[idx].to(device)
            log_student = F.log_softmax(logits / temperature, dim=1)
            soft_t = soft.clamp(min=1e-8) ** (1.0 / temperature)
            soft_t = soft_t / soft_t.sum(dim=1, keepdim=True)
            kl = (soft_t * (torch.log(soft_t) - log_student)).sum(dim=1) * temperature**2
            per_sample = per_sample + kl
        if y_all is not None:
            y = y_all[idx].to(device)
            known = y >= 0
            ce = torch.zeros(len(idx), device=device)
            if known.any():
                ce[known] = F.cross_entropy(logits[known], y[known], reduction="none")
            if s_all is not None:
                w = config.distil_weight
                per_sample = torch.where(known, w * per_sample + (1 - w) * ce, per_sample)
            else:
                per_sample = ce
        if w_all is not None:
            per_sample = per_sample * w_all[idx].to(device)
        return per_sample.mean()

    return training.run_fit(model, len(images), config, batch_loss, desc, progress)


def predict(model: Deployable, images: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return (probs, embeddings) of uint8 NHWC ``images`` with the torch model."""
    probs, embeddings = training.predict_batches(model, images, batch_size, lambda x: model(x)[:2])
    return probs, embeddings


def export_onnx(model: Deployable, path: str | Path, height: int, width: int, channels: int = 3) -> Path:
    """Write ``model`` as a single-file ONNX graph (opset 17, dynamic batch); return the path."""
    return training.export_graph(model, path, (height, width, channels), OUTPUTS)


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """Return ``images`` resized to size x size (area resampling, as the classifiers' manifests declare)."""
    from fleetloop_core.preprocess import resize_to

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_to(image, size, size, "area")
    return out


class ClassificationTrainer:
    """Classification's part of the reference-model build (``fleetloop_models.trainers.Trainer``)."""

    task: TaskName = "classification"
    labels: Sequence[str] = dataset.LABELS
    seed_prefix = ""
    metric = "accuracy"

    def sim_part(self, profile: BuildProfile) -> str:
        """Return what the build's frames hold: one item (or none) and its class label."""
        return self.task

    def train(
        self, tier: Tier, spec: TierBuild, data: LabelledSet, count: int, profile: BuildProfile, progress: bool
    ) -> Trained:
        """Return a fresh ``spec.arch`` classifier trained on the first ``count`` frames of ``data``."""
        images = resize_all(data.images[:count], spec.input_size)
        model = Deployable(zoo.build_classifier(spec.arch, num_classes=len(self.labels), seed=profile.seed))
        config = FitConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=profile.seed)
        report = fit(
            model, images, data.labels[:count], config=config, desc=f"{tier} {TIER_NAMES[tier]}", progress=progress
        )
        note = (
            f"Fashion-MNIST train items 0..49999 rendered as {spec.data} frames "
            f"({profile.frame_height}x{profile.frame_width}, resized to {spec.input_size})"
        )
        return Trained(model, report, profile.seed, {"data": note})

    def write(
        self,
        trained: Trained,
        directory: Path,
        name: str,
        version: str,
        tier: Tier,
        spec: TierBuild,
        info: dict[str, Any],
    ) -> Manifest:
        """Write the package: model.onnx (probs, embedding, uncertainty), weights.pt, manifest.json."""
        model, size = trained.model, spec.input_size
        return write_package(
            model,
            directory,
            lambda path: export_onnx(model, path, size, size),
            name=name,
            version=version,
            tier=tier,
            task=self.task,
            architecture=spec.arch,
            labels=self.labels,
            input_size=(size, size),
            resize="area",
            training=info,
            weights=spec.weights,
            outputs=OutputSpec(
                probs="probs", embedding="embedding", embedding_normalised=True, uncertainty="uncertainty"
            ),
        )

    def load(self, directory: Path) -> TierModel:
        """Return the exported model of a package, on the CPU."""
        from fleetloop_core.inference import TierModel

        return TierModel.load(directory, providers=("cpu",), warmup=0)

    def score(self, model: TierModel, data: LabelledSet) -> dict[str, float]:
        """Return the top-1 accuracy of ``model`` on ``data``, overall, per class present and on the confusable classes.

        Keys: ``accuracy``, ``accuracy.items`` (frames showing an item), ``accuracy.<label>`` and
        ``accuracy.confusable`` (the upper-body garments
        Fashion-MNIST itself confuses: :data:`CONFUSABLE`).
        """
        predicted = model.infer_batch(data.images).probs.argmax(axis=1)
        correct = predicted == data.labels
        scores = {"accuracy": float(correct.mean())}
        items = data.labels != self.labels.index(dataset.NONE_LABEL)
        if items.any():
            scores["accuracy.items"] = float(correct[items].mean())  # frames that show an item
        for index, label in enumerate(self.labels):
            shown = data.labels == index
            if shown.any():
                scores[f"accuracy.{label}"] = float(correct[shown].mean())
        confusable = np.isin(data.labels, [self.labels.index(label) for label in CONFUSABLE])
        if confusable.any():
            scores["accuracy.confusable"] = float(correct[confusable].mean())
        return scores


TRAINER: Trainer = ClassificationTrainer()
