"""Training, distillation, prediction and ONNX export of tier networks (torch, CPU or GPU).

Imported only where models are built (``fleetloop models build``, the cloud's train step);
nothing on a robot's inference path imports torch.

Exported graphs take raw uint8 NHWC pixels and normalise in the graph, and output
``probs`` (N, C), ``embedding`` (N, D, unit length) and ``uncertainty`` (N, 3) = entropy, margin and least
confidence exactly as ``fleetloop_core.uncertainty`` defines them, so the robot pays no Python
time for those scores.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from fleetloop_core.zoo import TierNet

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)
OPSET = 17


def set_threads(threads: int | None = None) -> None:
    """Use ``threads`` CPU threads for torch (default: all cores)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


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


class Deployable(nn.Module):
    """A tier network wrapped for deployment: uint8 NHWC in; probs, embedding, uncertainty out."""

    def __init__(self, net: TierNet, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        super().__init__()
        self.net = net
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("offset", mean_t / std_t)
        self.uncertainty = UncertaintyHead(net.head.out_features)
        self.mean, self.std = tuple(mean), tuple(std)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) -> normalised float (N, C, H, W)."""
        return pixels.permute(0, 3, 1, 2).float() * self.scale - self.offset

    def logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, embedding) for uint8 NHWC pixels."""
        return self.net.forward_logits(self.normalise(pixels))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, embedding = self.logits(pixels)
        probs = torch.softmax(logits, dim=1)
        # unit-length embeddings: cosine similarity on the robot is a single dot product
        return probs, F.normalize(embedding, dim=1, eps=1e-6), self.uncertainty(probs)


@dataclass
class FitConfig:
    """How to train: epochs, batch size, peak learning rate (one-cycle), weight decay, seed."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True
    distil_temperature: float = 2.0
    distil_weight: float = 0.7  # share of the soft-target loss when hard labels exist too
    threads: int | None = None


@dataclass
class FitReport:
    """What training did: samples seen, seconds, final loss, per-epoch losses."""

    samples: int
    epochs: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    device: str = "cpu"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(
    model: Deployable,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    soft_targets: np.ndarray | None = None,
    config: FitConfig | None = None,
    desc: str = "train",
    progress: bool = True,
    sample_weights: np.ndarray | None = None,
) -> FitReport:
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
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    device = _device()
    model.to(device).train()
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.asarray(labels, np.int64)) if labels is not None else None
    s_all = torch.from_numpy(np.asarray(soft_targets, np.float32)) if soft_targets is not None else None
    w_all = torch.from_numpy(np.asarray(sample_weights, np.float32)) if sample_weights is not None else None
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    if total_steps >= 8:
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=0.25
        )
    else:  # one-cycle's warm-up and annealing phases need a few steps each: keep the rate constant
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    start = time.perf_counter()
    temperature = config.distil_temperature
    bar = tqdm(
        total=steps_per_epoch * config.epochs,
        desc=desc,
        disable=not progress,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        running, count = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
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
            loss = per_sample.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / count:.3f}")
        losses.append(running / max(count, 1))
    bar.close()
    model.eval().cpu()
    return FitReport(
        samples=n,
        epochs=config.epochs,
        seconds=time.perf_counter() - start,
        final_loss=losses[-1],
        losses=losses,
        device=str(device),
    )


@torch.no_grad()
def predict(model: Deployable, images: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Return (probs, embeddings) of uint8 NHWC ``images`` with the torch model."""
    model.eval()
    device = next(model.parameters()).device
    probs, embeddings = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        p, e, _ = model(x)
        probs.append(p.cpu().numpy())
        embeddings.append(e.cpu().numpy())
    return np.concatenate(probs), np.concatenate(embeddings)


def export_onnx(model: Deployable, path: str | Path, height: int, width: int, channels: int = 3) -> Path:
    """Write ``model`` as a single-file ONNX graph (opset 17, dynamic batch); return the path."""
    model = model.eval().cpu()
    dummy = torch.zeros((1, height, width, channels), dtype=torch.uint8)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (dummy,),
        buffer,
        input_names=["image"],
        output_names=["probs", "embedding", "uncertainty"],
        dynamic_axes={
            "image": {0: "batch"},
            "probs": {0: "batch"},
            "embedding": {0: "batch"},
            "uncertainty": {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path
