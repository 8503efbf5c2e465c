"""eds.training: the InfoNCE loss, balanced sampling, the batched multi-layer trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eds.ebm import EBMLoadError, EBMSpec, load_ebm, save_ebm
from eds.training import (
    TrainSettings,
    balanced_batches,
    build_ebm,
    info_nce,
    info_nce_per_example,
    info_nce_reference,
    init_model,
    standardization,
    train_layers,
)

# ------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize(("n_good", "n_bad", "scale"), [(1, 1, 1.0), (7, 3, 1.0), (16, 16, 3.0), (5, 40, 0.2)])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_loss_equals_per_example_reference(n_good: int, n_bad: int, scale: float, tau: float) -> None:
    gen = torch.Generator().manual_seed(n_good * 100 + n_bad)
    e_good = torch.randn(n_good, generator=gen, dtype=torch.float64) * scale
    e_bad = torch.randn(n_bad, generator=gen, dtype=torch.float64) * scale
    reference = torch.tensor(info_nce_reference(e_good.tolist(), e_bad.tolist(), tau), dtype=torch.float64)
    torch.testing.assert_close(info_nce_per_example(e_good, e_bad, tau), reference, rtol=1e-5, atol=0)
    torch.testing.assert_close(info_nce(e_good.float(), e_bad.float(), tau).double(), reference.mean(), rtol=1e-5, atol=0)


def test_loss_is_batched_over_layers_and_stable_for_large_energies() -> None:
    e_good, e_bad = torch.randn(4, 6), torch.randn(4, 9)
    per_layer = torch.stack([info_nce(e_good[i], e_bad[i], 0.1) for i in range(4)])
    torch.testing.assert_close(info_nce(e_good, e_bad, 0.1), per_layer)
    big = info_nce(torch.tensor([500.0]), torch.tensor([-500.0, 400.0]), 0.1)
    assert torch.isfinite(big) and big.item() == pytest.approx(10000.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        info_nce(torch.zeros(3), torch.zeros(0), 0.1)


def test_loss_prefers_low_good_and_high_bad_energy() -> None:
    assert info_nce(torch.tensor([-1.0]), torch.tensor([1.0]), 0.1) < info_nce(torch.tensor([1.0]), torch.tensor([-1.0]), 0.1)


# ------------------------------------------------------------------------------ sampling


def test_balanced_batches_use_every_example() -> None:
    good, bad = torch.arange(0, 23), torch.arange(100, 107)
    batches = balanced_batches(good, bad, 5, torch.Generator().manual_seed(0))
    assert len(batches) == 5
    assert all(len(g) == 5 and len(b) == 5 for g, b in batches)
    seen_good = torch.cat([g for g, _ in batches])
    assert set(seen_good.tolist()) == set(good.tolist())  # the larger class: each row once, +2 wrap-around
    assert set(torch.cat([b for _, b in batches]).tolist()) == set(bad.tolist())  # the smaller: cycled
    again = balanced_batches(good, bad, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="both classes"):
        balanced_batches(good, bad[:0], 5, torch.Generator())


# ------------------------------------------------------------------------------ the trainer


def _data(n_layers: int = 3, n: int = 48, dim: int = 6, signal_layer: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_layers, n, dim, generator=gen) * 2 + 1
    good = torch.arange(n) % 3 != 0
    features[signal_layer, good, 0] -= 3.0
    rows = torch.randperm(n, generator=gen)
    return features, good, rows[: n * 3 // 4], rows[n * 3 // 4 :]


SPEC = EBMSpec(input_dim=6, widths=(8, 8), dropout=0.15)
FAST = TrainSettings(epochs=4, batch_size=8, lr=1e-3, tau=0.1, seed=3, patience=None, threads=1)


def test_training_is_deterministic_under_a_seed() -> None:
    features, good, train, val = _data()
    first = train_layers(features, good, train, val, SPEC, FAST)
    second = train_layers(features, good, train, val, SPEC, FAST)
    for a, b in zip(first, second):
        assert a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    other = train_layers(features, good, train, val, SPEC, TrainSettings(**{**FAST.__dict__, "seed": 4}))
    assert not torch.equal(other[0].state_dict["head.weight"], first[0].state_dict["head.weight"])


def test_all_layers_at_once_equals_each_layer_alone() -> None:
    """Stacked (vmap) training gives each layer exactly its own gradient, batches and dropout
    masks; only the batched matmul's rounding may differ from the single-layer run."""
    features, good, train, val = _data(n_layers=3)
    together = train_layers(features, good, train, val, SPEC, FAST)
    for layer in range(3):
        alone = train_layers(features[layer : layer + 1], good, train, val, SPEC, FAST, layer_ids=[layer])[0]
        assert alone.layer == together[layer].layer == layer
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(together[layer].state_dict[key], value, rtol=1e-4, atol=1e-5)
        assert alone.best_epoch == together[layer].best_epoch
        assert alone.val_loss == pytest.approx(together[layer].val_loss, rel=1e-4)


def test_best_validation_checkpoint_and_early_stopping() -> None:
    features, good, train, val = _data()
    settings = TrainSettings(epochs=30, batch_size=8, lr=3e-3, seed=0, patience=2, threads=1)
    results = train_layers(features, good, train, val, SPEC, settings)
    for result in results:
        assert result.best_val_loss == min(result.val_loss[: result.best_epoch])
        model = build_ebm(SPEC, result.state_dict)
        with torch.no_grad():
            g, b = model(features[result.layer, val[good[val]]]), model(features[result.layer, val[~good[val]]])
        assert info_nce(g, b, settings.tau).item() == pytest.approx(result.best_val_loss, rel=1e-5)
    # A layer is frozen `patience` epochs after its best; training ends when all are frozen.
    last_best = max(r.best_epoch for r in results)
    assert results[0].epochs_run <= min(30, last_best + 2)
    assert len(results[0].val_loss) == results[0].epochs_run


def test_standardisation_is_stored_in_the_model() -> None:
    features, good, train, val = _data()
    results = train_layers(features, good, train, val, SPEC, FAST)
    mean, std = standardization(features[2, train])
    torch.testing.assert_close(results[2].state_dict["mean"], mean)
    torch.testing.assert_close(results[2].state_dict["std"], std)
    torch.testing.assert_close(mean, features[2, train].mean(0), rtol=1e-5, atol=1e-5)
    plain = train_layers(features, good, train, val, SPEC, TrainSettings(**{**FAST.__dict__, "standardize": False}))
    assert torch.equal(plain[0].state_dict["mean"], torch.zeros(6))
    constant = torch.ones(10, 3)
    constant[:, 1] = torch.arange(10.0)
    assert standardization(constant)[1].tolist() == pytest.approx([1.0, float(torch.arange(10.0).std(unbiased=False)), 1.0])


def test_trained_ebm_round_trips_and_checks_hidden_size(tmp_path: Path) -> None:
    features, good, train, val = _data()
    result = train_layers(features, good, train, val, SPEC, FAST)[1]
    save_ebm(tmp_path / "layer_01", build_ebm(SPEC, result.state_dict), {"layer": 1})
    loaded = load_ebm(tmp_path / "layer_01", hidden_size=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(features[1]), build_ebm(SPEC, result.state_dict)(features[1]))
    with pytest.raises(EBMLoadError, match="hidden size 6.*576"):
        load_ebm(tmp_path / "layer_01", hidden_size=576)


def test_each_layer_is_initialised_from_its_own_seed() -> None:
    a, b = init_model(SPEC, 0, 1), init_model(SPEC, 0, 1)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, init_model(SPEC, 0, 2).head.weight)


def test_training_needs_both_classes_in_both_splits() -> None:
    features, good, train, val = _data()
    with pytest.raises(ValueError, match="val split needs good and bad"):
        train_layers(features, good, train, val[good[val]], SPEC, FAST)
