"""Scoring each layer's EBM on held-out states, and choosing the layers to steer.

Two scores per layer, both computed on the validation split and both "higher is better":

* **AUROC** of the energy as a detector of bad states: the probability that a random bad state
  gets a higher energy than a random good one, ties counting one half (the Mann-Whitney U
  statistic over ``#good * #bad``, computed from average ranks, so O(n log n)).
* **Pairwise accuracy**: the same probability, but only over (good, bad) pairs that share the
  ``pair_by`` fields (default: dataset and prompt type), pooled over groups. For the default,
  a pair is e.g. a benign prompt answered vs a benign prompt refused by the same benchmark, so
  it measures whether the energy separates *behaviour* for the same kind of prompt, which is
  what steering uses; global AUROC can be high merely because harmful prompts look different
  from benign ones. It is ``None`` when no group holds both a good and a bad state. (The
  authors' accuracy, "energy < 0 means good", depends on an arbitrary offset of E and is not
  used.)

Layers are ranked by the chosen metric (``None`` ranks last), ties broken by the lower layer.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eds.records import atomic_write_bytes

METRICS = ("auroc", "pairwise_accuracy")


def _mann_whitney(good: np.ndarray, bad: np.ndarray) -> float:
    """U statistic: #pairs with E(bad) > E(good) plus half the ties."""
    values = np.concatenate([good, bad]).astype(np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = average_rank[inverse]
    n_bad = len(bad)
    return float(ranks[len(good) :].sum() - n_bad * (n_bad + 1) / 2.0)


def auroc(energy_good: Sequence[float] | np.ndarray, energy_bad: Sequence[float] | np.ndarray) -> float:
    """P(E(bad) > E(good)) + P(tie)/2; raises if either class is empty."""
    good, bad = np.asarray(energy_good, dtype=np.float64), np.asarray(energy_bad, dtype=np.float64)
    if len(good) == 0 or len(bad) == 0:
        raise ValueError(f"AUROC needs good and bad examples (got {len(good)} good, {len(bad)} bad)")
    return _mann_whitney(good, bad) / (len(good) * len(bad))


def pairwise_accuracy(
    energies: Sequence[float] | np.ndarray, good: Sequence[bool] | np.ndarray, groups: Sequence[Hashable]
) -> tuple[float | None, int]:
    """(fraction of same-group (good, bad) pairs with E(good) < E(bad), ties 1/2; number of pairs)."""
    energies = np.asarray(energies, dtype=np.float64)
    good = np.asarray(good, dtype=bool)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    wins, pairs = 0.0, 0
    for rows in members.values():
        idx = np.asarray(rows)
        g, b = energies[idx][good[idx]], energies[idx][~good[idx]]
        if len(g) and len(b):
            wins += _mann_whitney(g, b)
            pairs += len(g) * len(b)
    return (wins / pairs if pairs else None), pairs


@dataclass(frozen=True)
class LayerScore:
    auroc: float
    pairwise_accuracy: float | None
    n_pairs: int
    n_good: int
    n_bad: int

    def value(self, metric: str) -> float | None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        return getattr(self, metric)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_layer(energies: np.ndarray, good: np.ndarray, groups: Sequence[Hashable]) -> LayerScore:
    """Both scores of one layer's energies on labelled states."""
    energies, good = np.asarray(energies, dtype=np.float64), np.asarray(good, dtype=bool)
    accuracy, pairs = pairwise_accuracy(energies, good, groups)
    return LayerScore(auroc(energies[good], energies[~good]), accuracy, pairs, int(good.sum()), int((~good).sum()))


def rank_layers(scores: Mapping[int, LayerScore], metric: str = "auroc") -> list[int]:
    """All layers, best first by ``metric`` (None last), ties to the lower layer."""
    def key(layer: int) -> tuple[bool, float, int]:
        value = scores[layer].value(metric)
        return (value is None, -(value or 0.0), layer)

    return sorted(scores, key=key)


def select_top_k(scores: Mapping[int, LayerScore], k: int, metric: str = "auroc") -> list[int]:
    """The ``k`` best layers by ``metric``; an error if fewer than ``k`` layers have a score."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > len(scores):
        raise ValueError(f"select.k = {k}, but only {len(scores)} layers were scored")
    ranked = rank_layers(scores, metric)
    chosen = ranked[:k]
    if any(scores[layer].value(metric) is None for layer in chosen):
        raise ValueError(f"fewer than {k} layers have a {metric} (no same-group good/bad pairs?)")
    return chosen


def plot_layer_scores(scores: Mapping[int, LayerScore], selected: Sequence[int], path: str | Path) -> None:
    """A PNG of AUROC and pairwise accuracy by layer, selected layers marked (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(scores)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(layers, [scores[l].auroc for l in layers], marker="o", label="AUROC (good vs bad)")
    pairwise = [(l, scores[l].pairwise_accuracy) for l in layers if scores[l].pairwise_accuracy is not None]
    if pairwise:
        ax.plot([l for l, _ in pairwise], [v for _, v in pairwise], marker="s", label="pairwise accuracy")
    for layer in selected:
        ax.axvline(layer, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set(xlabel="layer", ylabel="validation score", ylim=(0.0, 1.02), title="EBM score by layer (dotted: selected)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def scores_csv(scores: Mapping[int, LayerScore]) -> str:
    """``layer,auroc,pairwise_accuracy,n_pairs`` rows (empty cell when undefined), for DVC plots."""
    lines = ["layer,auroc,pairwise_accuracy,n_pairs"]
    for layer in sorted(scores):
        score = scores[layer]
        accuracy = "" if score.pairwise_accuracy is None else f"{score.pairwise_accuracy:.6f}"
        lines.append(f"{layer},{score.auroc:.6f},{accuracy},{score.n_pairs}")
    return "\n".join(lines) + "\n"


__all__ = [
    "LayerScore",
    "METRICS",
    "auroc",
    "pairwise_accuracy",
    "plot_layer_scores",
    "rank_layers",
    "score_layer",
    "scores_csv",
    "select_top_k",
]
