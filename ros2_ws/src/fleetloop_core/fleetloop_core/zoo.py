"""Model architectures of the four reference tiers (plain torch; imported only to train).

Each network maps a normalised NCHW image batch to ``(probs, embedding)``: class probabilities
(softmax, in the graph) and the penultimate-layer embedding (non-negative, after ReLU), which is
what the ONNX export exposes and what the robots' novelty score uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int, depthwise: bool) -> nn.Sequential:
    if depthwise:
        return nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _stem(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # stride 4: non-overlapping 4x4 patches (as ConvNeXt); stride 2: a 3x3 conv
    kernel, padding = (4, 0) if stride == 4 else (3, 1)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, depthwise: bool):
        super().__init__()
        self.body = _conv_bn(channels, channels, 1, depthwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass(frozen=True)
class ArchSpec:
    """Shape of a tier network: stage widths, blocks per stage, depthwise or full convs."""

    channels: tuple[int, ...]
    embedding_dim: int
    blocks_per_stage: tuple[int, ...] | int = 1
    depthwise: bool = False
    stem_stride: int = 2


# Every tier reads the 128x128 camera frame directly: a stride-4 "patchify" stem keeps the
# compute of a 32x32 feature map while seeing full-resolution pixels, and the robot pays no resize.
ARCHITECTURES: dict[str, ArchSpec] = {
    # T4: every frame on the robot; <= 50k parameters
    "edge-tiny": ArchSpec(channels=(16, 32, 48, 64), embedding_dim=32, stem_stride=4),
    # T3: on-robot escalation target
    "edge-small": ArchSpec(channels=(24, 48, 96, 160), embedding_dim=64, stem_stride=4),
    # T2: cloud domain teacher
    "teacher": ArchSpec(channels=(32, 64, 128, 256), embedding_dim=128, stem_stride=4),
    # T1: cloud foundation tier, the widest and deepest
    "foundation": ArchSpec(
        channels=(32, 64, 128, 256), embedding_dim=128, blocks_per_stage=(1, 1, 2, 2), stem_stride=4
    ),
}


class TierNet(nn.Module):
    """A small CNN classifier with an embedding head."""

    def __init__(self, spec: ArchSpec, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_stem(in_channels, spec.channels[0], spec.stem_stride)]
        previous = spec.channels[0]
        for index, width in enumerate(spec.channels):
            stride = 1 if index == 0 else 2
            if index > 0:
                layers.append(_conv_bn(previous, width, stride, spec.depthwise))
            blocks = spec.blocks_per_stage
            count = blocks[index] if isinstance(blocks, tuple) else blocks
            for _ in range(count - 1):
                layers.append(_Residual(width, spec.depthwise))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Sequential(nn.Linear(previous, spec.embedding_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(spec.embedding_dim, num_classes)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, embedding)."""
        features = self.pool(self.features(x)).flatten(1)
        embedding = self.embed(features)
        return self.head(embedding), embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.forward_logits(x)
        return torch.softmax(logits, dim=1), embedding


def build(arch: str, num_classes: int) -> TierNet:
    """Return a fresh network of architecture ``arch``."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    return TierNet(ARCHITECTURES[arch], num_classes)


def parameter_count(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(arches: Sequence[str] = tuple(ARCHITECTURES), num_classes: int = 11) -> dict[str, int]:
    """Return parameter counts per architecture."""
    return {name: parameter_count(build(name, num_classes)) for name in arches}
