"""Rates, bootstrap intervals (coverage on a known binomial), per-group rates and flat metric keys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eds.metrics import (
    Rate,
    accuracy,
    bootstrap_ci,
    bootstrap_means,
    by_group,
    compliance_rate,
    flat_metrics,
    paired_difference,
    rate,
    refusal_rate,
)


def test_refusal_compliance_and_accuracy_are_the_right_means() -> None:
    refused = [True, False, False, True, False]
    assert refusal_rate(refused).value == pytest.approx(0.4)
    assert compliance_rate(refused).value == pytest.approx(0.6)
    assert accuracy([True, True, False, True]).value == pytest.approx(0.75)
    assert refusal_rate(refused).n == 5


def test_interval_brackets_the_estimate_and_is_seeded() -> None:
    values = [1] * 30 + [0] * 70
    r = rate(values, samples=2000, seed=3)
    assert r.ci_low <= r.value <= r.ci_high
    assert 0.18 < r.ci_low < 0.30 < r.ci_high < 0.40
    assert rate(values, samples=2000, seed=3) == r
    assert not np.array_equal(bootstrap_means(values, 50, seed=3), bootstrap_means(values, 50, seed=4))


def test_degenerate_samples_have_zero_width_intervals() -> None:
    assert rate([1, 1, 1]) == Rate(1.0, 1.0, 1.0, 3)
    assert rate([0, 0]) == Rate(0.0, 0.0, 0.0, 2)


def test_empty_sample_is_nan_and_serialises_as_null() -> None:
    r = rate([])
    assert r.n == 0 and math.isnan(r.value)
    assert r.as_dict() == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    assert flat_metrics("t/v", "compliance", r) == {"t/v/n": 0}


def test_binomial_shortcut_matches_index_resampling_in_distribution() -> None:
    """For 0/1 data the bootstrap mean is Binomial(n, p)/n: compare with explicit index resampling."""
    data = np.array([1] * 13 + [0] * 27, dtype=float)
    fast = bootstrap_means(data, samples=20000, seed=0)
    rng = np.random.default_rng(1)
    slow = data[rng.integers(0, len(data), size=(20000, len(data)))].mean(axis=1)
    assert fast.mean() == pytest.approx(slow.mean(), abs=0.003)
    assert fast.std() == pytest.approx(slow.std(), rel=0.03)
    assert np.quantile(fast, 0.025) == pytest.approx(np.quantile(slow, 0.025), abs=0.026)


def test_non_binary_values_are_resampled_by_index() -> None:
    values = np.linspace(-1.0, 1.0, 101) ** 3
    low, high = bootstrap_ci(values, samples=3000, seed=0)
    assert low < values.mean() < high
    means = bootstrap_means(values, samples=500, seed=0)
    assert means.shape == (500,) and len(set(np.round(means, 9))) > 400


def test_percentile_interval_covers_a_known_binomial_about_95_percent() -> None:
    """Draw 1,000 data sets of n=200 from p=0.3; the 95% interval should contain 0.3 in ~95% of them."""
    rng = np.random.default_rng(12345)
    p, n, trials = 0.3, 200, 1000
    covered = 0
    for t in range(trials):
        sample = rng.random(n) < p
        r = rate(sample, samples=1000, seed=t)
        covered += r.ci_low <= p <= r.ci_high
    assert 0.925 <= covered / trials <= 0.975


def test_confidence_must_be_a_probability() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([0, 1], confidence=1.5)
    with pytest.raises(ValueError):
        bootstrap_means([], samples=10)
    with pytest.raises(ValueError):
        rate([float("nan"), 1.0])


def test_complement_flips_the_interval() -> None:
    r = Rate(0.2, 0.1, 0.35, 50).complement()
    assert r == Rate(0.8, 0.65, 0.9, 50)


def test_paired_difference_keeps_pairs_together() -> None:
    a = [1, 1, 0, 1, 0, 1, 1, 1]
    b = [0, 1, 0, 0, 0, 1, 0, 1]
    d = paired_difference(a, b, samples=2000, seed=0)
    assert d.value == pytest.approx(0.375)
    assert d.ci_low >= 0.0  # every pair moves the same way or not at all
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


def test_by_group_rates_and_missing_category() -> None:
    out = by_group([1, 0, 1, 1, 0], ["b", "a", "b", None, "a"], samples=200)
    assert list(out) == ["(none)", "a", "b"]
    assert out["a"].value == 0.0 and out["a"].n == 2
    assert out["b"].value == 1.0
    assert out["(none)"].n == 1


def test_flat_metric_keys_name_task_variant_and_metric() -> None:
    flat = flat_metrics("orb_h/eds", "compliance", Rate(0.5, 0.4, 0.6, 10))
    assert flat == {
        "orb_h/eds/compliance": 0.5,
        "orb_h/eds/compliance_ci_low": 0.4,
        "orb_h/eds/compliance_ci_high": 0.6,
        "orb_h/eds/n": 10,
    }
