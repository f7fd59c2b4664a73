"""The training machinery every task shares (torch, CPU or GPU): one fit loop, batched prediction, ONNX export.

What differs per task (the network wrapper, the loss, the targets, the output layout) is in
``fleetloop_models.trainers``; this module holds what a classifier and a detector train and export
with alike: the in-graph pixel normalisation, the recipe's common fields, the optimiser and
one-cycle schedule, the seeded batch order, the progress bar, the report, the atomic ONNX write.

Imported only where models are built (``fleetloop models build``, the cloud's train step);
nothing on a robot's inference path imports torch.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)
OPSET = 17

# one training step: (batch indices, the recipe's generator, device) -> the batch's mean loss
BatchLoss = Callable[[torch.Tensor, torch.Generator, torch.device], torch.Tensor]


def set_threads(threads: int | None = None) -> None:
    """Use ``threads`` CPU threads for torch (default: all cores)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def device() -> torch.device:
    """Return the device training runs on: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PixelInput(nn.Module):
    """Base of the deployable wrappers: raw uint8 NHWC pixels in, normalised in the graph."""

    net: nn.Module  # the wrapped network (each wrapper names its kind)
    scale: torch.Tensor  # buffers (register_buffer), declared for the type checker
    offset: torch.Tensor

    def __init__(self, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("offset", mean_t / std_t)
        self.mean, self.std = tuple(mean), tuple(std)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) -> normalised float (N, C, H, W)."""
        return pixels.permute(0, 3, 1, 2).float() * self.scale - self.offset


@dataclass
class Recipe:
    """What every task's training config has: epochs, batch size, peak learning rate (one-cycle), seed."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True
    threads: int | None = None

    # share of the steps spent warming up, and the fewest steps one-cycle runs at (fewer: a
    # constant rate); per task, part of the recipe its reference models were trained with
    warmup_share: ClassVar[float] = 0.25
    one_cycle_min_steps: ClassVar[int] = 1


@dataclass
class FitReport:
    """What training did: samples seen, seconds, final loss, per-epoch losses."""

    samples: int
    epochs: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    device: str = "cpu"


def _schedule(
    optimiser: torch.optim.Optimizer, recipe: Recipe, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if total_steps >= recipe.one_cycle_min_steps:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=recipe.lr, total_steps=total_steps, pct_start=recipe.warmup_share
        )
    # one-cycle's warm-up and annealing phases need a few steps each: keep the rate constant
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)


def run_fit(
    model: nn.Module, samples: int, recipe: Recipe, batch_loss: BatchLoss, desc: str, progress: bool
) -> FitReport:
    """Train ``model`` in place over ``samples`` indices with AdamW and one-cycle; return a FitReport.

    Seeds torch and the batch order from ``recipe.seed``; ``batch_loss`` computes each batch's loss
    (the task's part) and may draw its augmentation from the generator it is given.
    """
    torch.manual_seed(recipe.seed)
    on = device()
    if on.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
    model.to(on).train()
    steps_per_epoch = max(1, math.ceil(samples / recipe.batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = _schedule(optimiser, recipe, steps_per_epoch * recipe.epochs)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(
        total=steps_per_epoch * recipe.epochs,
        desc=desc,
        disable=not progress,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )
    for epoch in range(recipe.epochs):
        order = torch.randperm(samples, generator=generator)
        running, count = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            loss = batch_loss(idx, generator, on)
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
        samples=samples,
        epochs=recipe.epochs,
        seconds=time.perf_counter() - start,
        final_loss=losses[-1],
        losses=losses,
        device=str(on),
    )


@torch.no_grad()
def predict_batches(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    outputs: Callable[[torch.Tensor], Sequence[torch.Tensor]],
) -> tuple[np.ndarray, ...]:
    """Return ``outputs(pixels)`` over uint8 NHWC ``images`` in batches, each output concatenated."""
    model.eval()
    on = next(model.parameters()).device
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(on)
        results = outputs(x)
        parts = parts or [[] for _ in results]
        for part, result in zip(parts, results):
            part.append(result.cpu().numpy())
    return tuple(np.concatenate(part) for part in parts)


def export_graph(
    model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], outputs: Sequence[str], static: bool = False
) -> Path:
    """Write ``model`` as a single-file ONNX graph (opset 17, dynamic batch) of uint8 ``image``; return the path.

    ``input_shape``: (height, width, channels); ``static``: declare every output axis but the batch
    static, so loaders can check a layout without running the graph.
    """
    model = model.eval().cpu()
    dummy = torch.zeros((1, *input_shape), dtype=torch.uint8)
    buffer = io.BytesIO()
    # torch annotates ``f`` as a path only; the TorchScript exporter (dynamo=False) takes a BytesIO too
    torch.onnx.export(
        model,
        (dummy,),
        buffer,  # type: ignore[arg-type]
        input_names=["image"],
        output_names=list(outputs),
        dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        opset_version=OPSET,
        dynamo=False,
    )
    data = buffer.getvalue()
    if static:
        with torch.no_grad():
            shapes = [tuple(t.shape) for t in model(dummy)]
        data = _static_output_shapes(data, outputs, shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _static_output_shapes(model_bytes: bytes, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> bytes:
    """Return the ONNX graph with every output axis but the batch declared static (the exporter leaves
    concatenated and transposed axes symbolic)."""
    import onnx

    graph = onnx.load_from_string(model_bytes)
    for output in graph.graph.output:
        if output.name not in names:
            continue
        shape = shapes[list(names).index(output.name)]
        dims = output.type.tensor_type.shape.dim
        for axis, size in enumerate(shape):
            if axis == 0 or axis >= len(dims):
                continue
            dims[axis].ClearField("dim_param")
            dims[axis].dim_value = int(size)
    serialised: bytes = graph.SerializeToString()
    return serialised
