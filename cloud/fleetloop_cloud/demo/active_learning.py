"""Human labels needed to reach 95 % of the upload-all accuracy: active learning versus random.

The unlabeled pool is every frame the fleet saw (the upload-all arm's frames); the model is a
linear probe (multinomial logistic regression) on the frozen T1 foundation embedding, retrained
at each budget; accuracy is measured on the held-out field test sets of the fleet's sites. The
active-learning arm picks every batch with the cloud loop's own strategy (``review.strategy``,
``fleetloop_cloud.active``; uncertainty from the current probe where the strategy uses it), its
first batch included (no probe yet: every frame equally uncertain), the random arm picks uniformly.
Until the eleventh session both arms started from the same random batch of 25 labels, so an arm
could not differ from random below 25 labels, and the target was reached at 45-100. The
reference is the probe trained on every frame of the pool ("upload all").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fleetloop_cloud import active


def train_probe(
    features: np.ndarray, labels: np.ndarray, classes: int, steps: int = 100, weight_decay: float = 1e-3, seed: int = 0
):
    """Return (weights, bias) of a softmax regression fitted with full-batch L-BFGS."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    weight = torch.zeros((features.shape[1], classes), requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + weight_decay * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach().numpy(), bias.detach().numpy()


def probe_probs(features: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = features @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class Curve:
    """Accuracy at each label budget for one strategy (mean over repeats)."""

    strategy: str
    budgets: list[int]
    accuracy: list[float]
    runs: list[list[float]] = field(default_factory=list)

    def labels_to_reach(self, target: float) -> float | None:
        """Return the labels needed to reach ``target`` accuracy (log-linear between budgets), None if never.

        Reached at the first budget, that budget is returned: the strategy needed at most that many.
        """
        for i, value in enumerate(self.accuracy):
            if value >= target:
                if i == 0:
                    return float(self.budgets[0])
                lo, hi = self.accuracy[i - 1], value
                frac = (target - lo) / (hi - lo) if hi > lo else 1.0
                return float(
                    np.exp(np.log(self.budgets[i - 1]) + frac * (np.log(self.budgets[i]) - np.log(self.budgets[i - 1])))
                )
        return None


@dataclass
class ActiveLearningResult:
    reference_accuracy: float
    target_accuracy: float
    target_share: float
    pool_frames: int
    curves: dict[str, Curve]
    labels_needed: dict[str, float | None]
    ratio: float | None  # active-learning labels / random labels (lower is better)
    strategy: str
    at_first_budget: list[str] = field(default_factory=list)  # reached the target at the smallest budget tried

    @property
    def ratio_is_upper_bound(self) -> bool:
        """True when the active-learning arm reached the target at the first budget (it may need fewer)."""
        return self.strategy in self.at_first_budget and "random" not in self.at_first_budget

    def to_dict(self) -> dict:
        return {
            "reference_accuracy": round(self.reference_accuracy, 4),
            "target_accuracy": round(self.target_accuracy, 4),
            "target_share": self.target_share,
            "pool_frames": self.pool_frames,
            "strategy": self.strategy,
            "labels_needed": {k: (round(v, 1) if v is not None else None) for k, v in self.labels_needed.items()},
            "ratio": round(self.ratio, 4) if self.ratio is not None else None,
            "ratio_is_upper_bound": self.ratio_is_upper_bound,
            "at_first_budget": self.at_first_budget,
            "curves": {
                k: {"budgets": c.budgets, "accuracy": [round(a, 4) for a in c.accuracy]} for k, c in self.curves.items()
            },
        }


def run(
    pool_features: np.ndarray,
    pool_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    classes: int,
    budgets: Sequence[int],
    repeats: int = 3,
    target_share: float = 0.95,
    strategy: str = "uncertainty-diversity",
    seed: int = 0,
    progress=None,
) -> ActiveLearningResult:
    """Return both learning curves and the labels each strategy needs to reach the target."""
    budgets = sorted({int(b) for b in budgets if 0 < b <= len(pool_labels)})
    if not budgets:
        raise ValueError(f"no label budget fits a pool of {len(pool_labels)} frames")
    weights, bias = train_probe(pool_features, pool_labels, classes, seed=seed)
    reference = float((probe_probs(test_features, weights, bias).argmax(1) == test_labels).mean())
    target = target_share * reference
    curves: dict[str, Curve] = {}
    for name in ("random", strategy):
        runs = []
        for repeat in range(repeats):
            rng = np.random.default_rng((seed, repeat))
            labeled = np.zeros(0, np.int64)
            accuracies = []
            for budget in budgets:
                if budget > len(labeled):
                    need = budget - len(labeled)
                    mask = np.zeros(len(pool_labels), bool)
                    mask[labeled] = True
                    candidates = np.flatnonzero(~mask)
                    if name == "random":
                        extra = rng.choice(candidates, size=need, replace=False)
                    elif not len(labeled):  # no probe yet: the strategy picks with every frame equally uncertain
                        flat = np.ones(len(candidates))
                        extra = candidates[active.select(name, pool_features[candidates], flat, need, rng)]
                    else:
                        w, b = train_probe(pool_features[labeled], pool_labels[labeled], classes, seed=seed)
                        probs = probe_probs(pool_features[candidates], w, b)
                        top2 = np.sort(probs, axis=1)[:, -2:]
                        uncertainty = 1.0 - (top2[:, 1] - top2[:, 0])  # margin, in [0, 1]
                        picked = active.select(
                            name, pool_features[candidates], uncertainty, need, rng, labeled=pool_features[labeled]
                        )
                        extra = candidates[np.asarray(picked, np.int64)]
                    labeled = np.concatenate([labeled, np.asarray(extra, np.int64)])
                w, b = train_probe(pool_features[labeled], pool_labels[labeled], classes, seed=seed)
                accuracies.append(float((probe_probs(test_features, w, b).argmax(1) == test_labels).mean()))
                if progress:
                    progress()
            runs.append(accuracies)
        curves[name] = Curve(name, budgets, list(np.mean(runs, axis=0)), runs)
    needed = {name: curve.labels_to_reach(target) for name, curve in curves.items()}
    ratio = needed[strategy] / needed["random"] if needed[strategy] and needed["random"] else None
    first = [name for name, value in needed.items() if value is not None and value <= budgets[0]]
    return ActiveLearningResult(
        reference, target, target_share, len(pool_labels), curves, needed, ratio, strategy, first
    )
