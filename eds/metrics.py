"""Rates with bootstrap confidence intervals, per task and per category.

Every evaluation metric here is the mean of one 0/1 outcome per item: refusal (harmful prompts),
compliance = 1 - refusal (benign prompts), accuracy (multiple choice, math). :func:`rate` gives
the mean and a seeded **percentile bootstrap** 95% interval.

For 0/1 outcomes the bootstrap needs no resampling of indices: the number of ones in a resample
of ``n`` items drawn with replacement from data with ``k`` ones is exactly ``Binomial(n, k/n)``,
so ``samples`` bootstrap means are ``rng.binomial(n, k/n, samples) / n`` -- the same distribution
as index resampling, drawn in O(samples) instead of O(samples * n). Non-binary values (and the
paired differences of :func:`paired_difference`) are resampled by index, vectorised, in chunks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_SAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
_CHUNK = 1 << 22  # index draws per vectorised chunk (~32 MB of int64)


@dataclass(frozen=True)
class Rate:
    """A mean of per-item outcomes with its bootstrap interval (``nan`` when ``n == 0``)."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: ``nan`` becomes ``None``."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}

    def complement(self) -> "Rate":
        """``1 - rate`` (e.g. compliance from refusal); the interval flips."""
        return Rate(1.0 - self.value, 1.0 - self.ci_high, 1.0 - self.ci_low, self.n)


def _as_array(values: Sequence[float] | Sequence[bool] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("outcomes must be finite numbers")
    return arr


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _index_bootstrap_means(arr: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(arr)
    per_chunk = max(1, _CHUNK // n)
    out = np.empty(samples)
    for start in range(0, samples, per_chunk):
        stop = min(samples, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = arr[idx].mean(axis=1)
    return out


def bootstrap_means(
    values: Sequence[float] | Sequence[bool] | np.ndarray, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> np.ndarray:
    """``samples`` bootstrap means of ``values`` (binomial shortcut for 0/1 data, see module doc)."""
    arr = _as_array(values)
    if len(arr) == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    if np.all((arr == 0) | (arr == 1)):
        return rng.binomial(len(arr), arr.mean(), size=samples) / len(arr)
    return _index_bootstrap_means(arr, samples, rng)


def bootstrap_ci(
    values: Sequence[float] | Sequence[bool] | np.ndarray,
    samples: int = DEFAULT_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return _percentiles(bootstrap_means(values, samples, seed), confidence)


def rate(
    outcomes: Sequence[float] | Sequence[bool] | np.ndarray,
    samples: int = DEFAULT_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Rate:
    """The mean of ``outcomes`` with its bootstrap interval; an empty input gives ``nan`` values."""
    arr = _as_array(outcomes)
    if len(arr) == 0:
        nan = float("nan")
        return Rate(nan, nan, nan, 0)
    low, high = bootstrap_ci(arr, samples, confidence, seed)
    return Rate(float(arr.mean()), low, high, len(arr))


def refusal_rate(refused: Sequence[bool], **kw: float) -> Rate:
    """Share of responses judged refusals (harmful prompts: higher is safer)."""
    return rate(refused, **kw)  # type: ignore[arg-type]


def compliance_rate(refused: Sequence[bool], **kw: float) -> Rate:
    """Share of responses *not* judged refusals (benign prompts: higher is more helpful)."""
    return rate([not r for r in refused], **kw)  # type: ignore[arg-type]


def accuracy(correct: Sequence[bool], **kw: float) -> Rate:
    """Share of correct answers (multiple choice, math)."""
    return rate(correct, **kw)  # type: ignore[arg-type]


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    samples: int = DEFAULT_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Rate:
    """``mean(a) - mean(b)`` over the same items (e.g. a steered and the unsteered variant),
    with a bootstrap interval that resamples items, keeping each item's pair together."""
    x, y = _as_array(a), _as_array(b)
    if len(x) != len(y):
        raise ValueError(f"paired outcomes need equal lengths, got {len(x)} and {len(y)}")
    return rate(x - y, samples, confidence, seed)


def by_group(
    outcomes: Sequence[float] | Sequence[bool],
    groups: Sequence[Hashable | None],
    samples: int = DEFAULT_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    missing: str = "(none)",
) -> dict[str, Rate]:
    """One :class:`Rate` per group (e.g. OR-Bench or HarmBench category), groups sorted by name."""
    if len(outcomes) != len(groups):
        raise ValueError(f"{len(outcomes)} outcomes but {len(groups)} groups")
    members: dict[str, list[float]] = defaultdict(list)
    for value, group in zip(outcomes, groups):
        members[missing if group is None or group == "" else str(group)].append(float(value))
    return {name: rate(members[name], samples, confidence, seed) for name in sorted(members)}


def flat_metrics(prefix: str, metric: str, value: Rate) -> dict[str, float | int]:
    """``{prefix/metric: v, prefix/metric_ci_low: .., prefix/metric_ci_high: .., prefix/n: n}``
    (``nan`` values are left out: JSON metrics files hold numbers only)."""
    out: dict[str, float | int] = {f"{prefix}/n": value.n}
    for suffix, number in (("", value.value), ("_ci_low", value.ci_low), ("_ci_high", value.ci_high)):
        if not np.isnan(number):
            out[f"{prefix}/{metric}{suffix}"] = round(float(number), 6)
    return out


def rates_table(rates: Mapping[str, Rate]) -> list[dict[str, float | int | str | None]]:
    """Rows ``{"name", "value", "ci_low", "ci_high", "n"}`` for reports."""
    return [{"name": name, **r.as_dict()} for name, r in rates.items()]


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_SAMPLES",
    "Rate",
    "accuracy",
    "bootstrap_ci",
    "bootstrap_means",
    "by_group",
    "compliance_rate",
    "flat_metrics",
    "paired_difference",
    "rate",
    "rates_table",
    "refusal_rate",
]
