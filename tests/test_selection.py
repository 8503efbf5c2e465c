"""eds.selection: AUROC with ties, pairwise accuracy, top-k, and a planted separable layer."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from eds.ebm import EBMSpec
from eds.selection import (
    LayerScore,
    auroc,
    pairwise_accuracy,
    plot_layer_scores,
    rank_layers,
    score_layer,
    scores_csv,
    select_top_k,
)
from eds.training import TrainSettings, build_ebm, train_layers


def brute_auroc(good: list[float], bad: list[float]) -> float:
    wins = sum(1.0 if b > g else 0.5 if b == g else 0.0 for g, b in itertools.product(good, bad))
    return wins / (len(good) * len(bad))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 6, size=rng.integers(1, 20)).astype(float).tolist()  # many ties
    bad = rng.integers(2, 8, size=rng.integers(1, 20)).astype(float).tolist()
    assert auroc(good, bad) == pytest.approx(brute_auroc(good, bad), abs=1e-12)


def test_auroc_extremes_and_errors() -> None:
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="good and bad"):
        auroc([], [1.0])


def test_pairwise_accuracy_compares_only_within_groups() -> None:
    # Benign prompts have low energy, harmful high; within each prompt type the energy ranks the
    # bad response above the good one only for benign prompts.
    energies = np.array([0.0, 1.0, 5.0, 6.0])
    good = np.array([True, False, False, True])  # benign: good 0 < bad 1; harmful: good 6 > bad 5
    groups = ["benign", "benign", "harmful", "harmful"]
    accuracy, pairs = pairwise_accuracy(energies, good, groups)
    assert (accuracy, pairs) == (0.5, 2)
    assert auroc(energies[good], energies[~good]) == 0.5  # global: (0<1, 0<5, 6>1, 6>5) -> 2 of 4
    assert pairwise_accuracy(energies, good, ["a", "b", "c", "d"]) == (None, 0)
    rng = np.random.default_rng(0)
    e, g = rng.integers(0, 4, 30).astype(float), rng.random(30) < 0.5
    grp = rng.integers(0, 3, 30).tolist()
    wins = pairs = 0.0
    for i, j in itertools.product(range(30), range(30)):
        if grp[i] == grp[j] and g[i] and not g[j]:
            pairs += 1
            wins += 1.0 if e[i] < e[j] else 0.5 if e[i] == e[j] else 0.0
    assert pairwise_accuracy(e, g, grp) == (pytest.approx(wins / pairs), int(pairs))


def _score(auroc_value: float, accuracy: float | None = None) -> LayerScore:
    return LayerScore(auroc_value, accuracy, 0 if accuracy is None else 4, 5, 5)


def test_top_k_ranking_ties_and_errors() -> None:
    scores = {0: _score(0.6, 0.9), 1: _score(0.8), 2: _score(0.8, 0.7), 3: _score(0.5, 0.95)}
    assert rank_layers(scores) == [1, 2, 0, 3]
    assert select_top_k(scores, 2) == [1, 2]
    assert select_top_k(scores, 2, "pairwise_accuracy") == [3, 0]
    assert rank_layers(scores, "pairwise_accuracy")[-1] == 1  # undefined ranks last
    with pytest.raises(ValueError, match="fewer than 4 layers"):
        select_top_k(scores, 4, "pairwise_accuracy")
    with pytest.raises(ValueError, match="only 4 layers"):
        select_top_k(scores, 5)


def test_selection_finds_a_planted_separable_layer() -> None:
    gen = torch.Generator().manual_seed(0)
    n_layers, n, dim, planted = 5, 120, 8, 3
    features = torch.randn(n_layers, n, dim, generator=gen)
    good = torch.arange(n) % 2 == 0
    features[planted, good] += torch.linspace(1.5, 0.5, dim)  # separable only at the planted layer
    rows = torch.randperm(n, generator=gen)
    train, val = rows[:80], rows[80:]
    spec = EBMSpec(dim, (16, 16))
    settings = TrainSettings(epochs=15, batch_size=16, lr=3e-3, seed=0, patience=5, threads=1)
    results = train_layers(features, good, train, val, spec, settings)
    scores = {}
    for result in results:
        with torch.no_grad():
            energies = build_ebm(spec, result.state_dict)(features[result.layer, val]).numpy()
        scores[result.layer] = score_layer(energies, good[val].numpy(), ["all"] * len(val))
    assert select_top_k(scores, 1) == [planted]
    assert scores[planted].auroc > 0.9
    assert max(s.auroc for layer, s in scores.items() if layer != planted) < 0.8


def test_plot_and_csv(tmp_path: Path) -> None:
    scores = {0: _score(0.6, 0.5), 1: _score(0.9)}
    plot_layer_scores(scores, [1], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scores_csv(scores).splitlines() == [
        "layer,auroc,pairwise_accuracy,n_pairs", "0,0.600000,0.500000,4", "1,0.900000,,0"
    ]
