"""Network architectures of the reference tiers, classifiers and detectors (plain torch; imported only to train).

One registry keyed by architecture name (:data:`ARCHITECTURES`); :func:`build` returns a fresh
network of any of them. Both families share the convolution blocks below.

* Classifiers (:class:`TierNet`) map a normalised NCHW batch to ``(probs, embedding)``: class
  probabilities (softmax, in the graph) and the penultimate-layer embedding (non-negative, after
  ReLU), which is what the ONNX export exposes and what the robots' novelty score uses.
* Detectors (:class:`DetectorNet`): a small single-stage, anchor-free detector (FCOS /
  YOLOv8-style, no objectness): a CNN backbone down to stride 16, its stride-16 context upsampled
  onto the stride-8 features, and one head per stride-8 cell predicting per-class logits and the
  distances (left, top, right, bottom, in pixels) from the cell centre to the box edges. It maps a
  normalised NCHW batch to ``(class_logits (N, C, A), ltrb (N, A, 4), embedding (N, D))`` over the
  ``A = (H / 8) * (W / 8)`` cells, cell ``a = row * (W / 8) + col``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 8  # detectors: one prediction per 8 x 8 pixel cell


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


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """Return the bias of a convolution built with one (torch types every convolution's bias as optional)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


class _Residual(nn.Module):
    def __init__(self, channels: int, depthwise: bool):
        super().__init__()
        self.body = _conv_bn(channels, channels, 1, depthwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


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
CLASSIFIERS: dict[str, ArchSpec] = {
    # T4: every frame on the robot; <= 50k parameters
    "edge-tiny": ArchSpec(channels=(16, 32, 48, 64), embedding_dim=32, stem_stride=4),
    # T3: on-robot escalation target
    "edge-small": ArchSpec(channels=(24, 48, 96, 160), embedding_dim=64, stem_stride=4),
    # T2: cloud domain teacher
    "teacher": ArchSpec(channels=(32, 64, 128, 256), embedding_dim=128, stem_stride=4),
    # T1 of the small profiles (tests, quick demo): the foundation recipe on a CPU budget
    "foundation": ArchSpec(
        channels=(32, 64, 128, 256), embedding_dim=128, blocks_per_stage=(1, 1, 2, 2), stem_stride=4
    ),
    # T1, the cloud foundation tier (profile ``foundation``): 2.5M parameters, 3.5 ms a frame on one CPU core
    "foundation-l": ArchSpec(
        channels=(48, 96, 192, 320), embedding_dim=256, blocks_per_stage=(2, 2, 3, 2), stem_stride=4
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


@dataclass(frozen=True)
class DetectorSpec:
    """Shape of a detector: widths at stride 4, 8 and 16, head width, residual blocks per stage."""

    channels: tuple[int, int, int]
    head: int
    embedding_dim: int
    blocks: tuple[int, int, int] = (0, 0, 0)
    depthwise: bool = False


DETECTORS: dict[str, DetectorSpec] = {
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
            layers: list[nn.Module] = [_conv_bn(c_in, c_out, 2, spec.depthwise)]
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
        nn.init.constant_(_bias(self.cls), -4.6)
        nn.init.constant_(_bias(self.box), 1.0)

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


ARCHITECTURES: dict[str, ArchSpec | DetectorSpec] = {**CLASSIFIERS, **DETECTORS}


def build(arch: str, num_classes: int, seed: int | None = None) -> TierNet | DetectorNet:
    """Return a fresh network of architecture ``arch`` (a classifier or a detector, by its spec).

    ``seed`` draws the initial weights from ``torch.manual_seed(seed)``: the network is then the same
    whatever ran before it in the process (which tiers were cached); None keeps torch's state.
    """
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    spec = ARCHITECTURES[arch]
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(spec, DetectorSpec):
        return DetectorNet(spec, num_classes)
    return TierNet(spec, num_classes)


def build_classifier(arch: str, num_classes: int, seed: int | None = None) -> TierNet:
    """Return a fresh classifier of architecture ``arch`` (:func:`build`); a KeyError when ``arch`` is a detector's."""
    net = build(arch, num_classes, seed)
    if not isinstance(net, TierNet):
        raise KeyError(f"architecture {arch!r} is a detector (classifiers: {', '.join(CLASSIFIERS)})")
    return net


def build_detector(arch: str, num_classes: int, seed: int | None = None) -> DetectorNet:
    """Return a fresh detector of architecture ``arch`` (:func:`build`); a KeyError when ``arch`` is a classifier's."""
    net = build(arch, num_classes, seed)
    if not isinstance(net, DetectorNet):
        raise KeyError(f"architecture {arch!r} is a classifier (detectors: {', '.join(DETECTORS)})")
    return net


def parameter_count(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
