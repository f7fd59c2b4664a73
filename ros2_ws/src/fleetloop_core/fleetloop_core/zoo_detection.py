"""Detector architectures of the four reference tiers (plain torch; imported only to train).

A small single-stage, anchor-free detector (FCOS / YOLOv8-style, no objectness): a CNN backbone
built from ``fleetloop_core.zoo``'s blocks down to stride 16, its stride-16 context upsampled
onto the stride-8 features, and one head per stride-8 cell predicting per-class logits and the
distances (left, top, right, bottom, in pixels) from the cell centre to the box edges. The edge
tiers are a few tens of thousands of parameters; the cloud tiers are wider and deeper.

:class:`DetectorNet` maps a normalised NCHW batch to ``(class_logits (N, C, A), ltrb (N, A, 4),
embedding (N, D))`` over the ``A = (H / 8) * (W / 8)`` cells, cell ``a = row * (W / 8) + col``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fleetloop_core.zoo import _conv_bn, _Residual, _stem, parameter_count

STRIDE = 8


@dataclass(frozen=True)
class DetectorSpec:
    """Shape of a detector: widths at stride 4, 8 and 16, head width, residual blocks per stage."""

    channels: tuple[int, int, int]
    head: int
    embedding_dim: int
    blocks: tuple[int, int, int] = (0, 0, 0)
    depthwise: bool = False


ARCHITECTURES: dict[str, DetectorSpec] = {
    # T4: every frame on the robot
    "det-tiny": DetectorSpec(channels=(16, 32, 48), head=32, embedding_dim=32),
    # T3: on-robot escalation target
    "det-small": DetectorSpec(channels=(24, 48, 96), head=48, embedding_dim=64, blocks=(0, 1, 1)),
    # T2: cloud domain teacher
    "det-teacher": DetectorSpec(channels=(32, 64, 128), head=64, embedding_dim=128, blocks=(1, 1, 2)),
    # T1: cloud foundation tier, the widest and deepest
    "det-foundation": DetectorSpec(channels=(32, 96, 160), head=96, embedding_dim=128, blocks=(1, 2, 2)),
}


class DetectorNet(nn.Module):
    """Backbone to stride 16, a stride-8 fused map, per-cell class logits and box distances."""

    stride = STRIDE

    def __init__(self, spec: DetectorSpec, num_classes: int, in_channels: int = 3):
        super().__init__()
        c4, c8, c16 = spec.channels
        self.num_classes = num_classes

        def stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
            layers = [_conv_bn(c_in, c_out, 2, spec.depthwise)]
            layers += [_Residual(c_out, spec.depthwise) for _ in range(blocks)]
            return nn.Sequential(*layers)

        self.stem = nn.Sequential(
            _stem(in_channels, c4, 4), *[_Residual(c4, spec.depthwise) for _ in range(spec.blocks[0])]
        )
        self.down8 = stage(c4, c8, spec.blocks[1])
        self.down16 = stage(c8, c16, spec.blocks[2])
        self.lateral = nn.Conv2d(c8, spec.head, 1)
        self.context = nn.Conv2d(c16, spec.head, 1)
        self.fuse = _conv_bn(spec.head, spec.head, 1, spec.depthwise)
        self.cls = nn.Conv2d(spec.head, num_classes, 3, padding=1)
        self.box = nn.Conv2d(spec.head, 4, 3, padding=1)
        self.embed = nn.Linear(c16, spec.embedding_dim)
        # rare positives: start every class near p = 0.01 (RetinaNet's prior) so early losses are sane
        nn.init.constant_(self.cls.bias, -4.6)
        nn.init.constant_(self.box.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8 = self.down8(self.stem(x))
        f16 = self.down16(f8)
        fused = self.lateral(f8) + F.interpolate(self.context(f16), size=f8.shape[-2:], mode="nearest")
        fused = self.fuse(F.relu(fused))
        logits = self.cls(fused).flatten(2)  # (N, C, A)
        ltrb = F.softplus(self.box(fused)).flatten(2).transpose(1, 2) * self.stride  # (N, A, 4) pixels
        embedding = F.relu(self.embed(f16.mean(dim=(2, 3))))
        return logits, ltrb, embedding


def cell_centres(height: int, width: int, stride: int = STRIDE) -> torch.Tensor:
    """Return the (A, 2) pixel centres (x, y) of the stride-``stride`` cells of a height x width input."""
    rows, cols = height // stride, width // stride
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def build(arch: str, num_classes: int) -> DetectorNet:
    """Return a fresh detector of architecture ``arch``."""
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown detector architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    return DetectorNet(ARCHITECTURES[arch], num_classes)


def describe(num_classes: int = 10) -> dict[str, int]:
    """Return parameter counts per detector architecture."""
    return {name: parameter_count(build(name, num_classes)) for name in ARCHITECTURES}
