"""Train / validation / evaluation splits of the prompt pool, exclusions and leak checks.

The protocol (see README): the datasets of ``data.train`` form a pool. Prompts listed in
exclusion files (e.g. the rows a fine-tuned testbed model was trained on) are dropped, then each
dataset's ``limit`` is drawn from the rest (seeded), then repeats of a prompt already in the pool
are dropped; a dataset with ``train_fraction < 1`` keeps that
seeded, category-stratified share for training and the rest becomes the ``eval`` split; of the
training pool, ``val_fraction`` (stratified by dataset x prompt type) is the ``val`` split used
for layer selection and early stopping. Every comparison uses :func:`eds.datasets.text_key`, the
sha256 of the normalised text, so a prompt that differs only in case or punctuation still counts
as the same prompt.

Stratified sampling is *systematic*: the items are ordered by stratum (shuffled with a seed within
each), and a seeded phase picks every 1/fraction-th. Each stratum then gets ``fraction * n``
items rounded up or down, and the total is within one of ``fraction * N``, even when strata are
tiny (a per-stratum ``round`` would send every singleton stratum the same way).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from eds.datasets import PromptItem, text_key

SplitName = Literal["train", "val", "eval"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "eval")
TRAINING_SPLITS: tuple[SplitName, ...] = ("train", "val")


class SplitError(ValueError):
    """The split inputs are unusable (a missing or malformed exclusion file, an empty split)."""


class SplitLeakError(SplitError):
    """An evaluation prompt also appears in a training split."""


@dataclass(frozen=True)
class SplitRow:
    """One prompt of the pool and the split it belongs to (a row of ``splits.parquet``)."""

    item_id: str
    dataset: str
    prompt: str
    prompt_type: str
    category: str | None
    text_key: str
    split: SplitName

    @classmethod
    def from_item(cls, item: PromptItem, split: SplitName = "train") -> "SplitRow":
        return cls(item.item_id, item.dataset, item.prompt, item.prompt_type, item.category, text_key(item.prompt), split)

    def to_item(self) -> PromptItem:
        return PromptItem(self.item_id, self.dataset, self.prompt, self.prompt_type, self.category)  # type: ignore[arg-type]

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SplitReport:
    """What happened to the pool: rows dropped per dataset and why."""

    excluded: dict[str, int] = field(default_factory=dict)
    duplicate: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolSource:
    """One dataset of the pool: all its prompts, the share kept for training, and a sample size.

    ``limit`` is drawn (seeded, as :func:`eds.datasets.sample`) *after* excluded prompts are
    removed, so ``limit: 200`` means 200 prompts the testbed never saw, when that many exist.
    """

    items: Sequence[PromptItem]
    train_fraction: float | None = None
    limit: int | None = None


# ------------------------------------------------------------------------------ exclusions


def load_exclusions(paths: Iterable[str | Path]) -> dict[str, set[str]]:
    """Read exclusion files ``{"text_keys": {"<dataset>": ["<sha256>", ...]}}``; the union per dataset.

    A missing or malformed file is an error naming it: silently training on excluded prompts
    would contaminate the evaluation.
    """
    merged: dict[str, set[str]] = defaultdict(set)
    for path in map(Path, paths):
        if not path.is_file():
            raise SplitError(f"exclusion file not found: {path} (listed in splits.exclude)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            keys = data["text_keys"]
            if not isinstance(keys, Mapping):
                raise TypeError("text_keys must map dataset -> list of sha256")
            for dataset, values in keys.items():
                if isinstance(values, str) or not all(_is_sha256(v) for v in values):
                    raise TypeError(f"text_keys[{dataset!r}] must be a list of sha256 hex strings")
                merged[str(dataset)].update(values)
        except (ValueError, KeyError, TypeError) as err:
            raise SplitError(f"malformed exclusion file {path}: {err}") from None
    return dict(merged)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def write_exclusions(path: str | Path, items: Iterable[PromptItem]) -> None:
    """Write an exclusion file in the format :func:`load_exclusions` reads (for producers and tests)."""
    from eds.records import atomic_write_json

    keys: dict[str, set[str]] = defaultdict(set)
    for item in items:
        keys[item.dataset].add(text_key(item.prompt))
    atomic_write_json(path, {"text_keys": {name: sorted(values) for name, values in sorted(keys.items())}})


# ------------------------------------------------------------------------------ stratified sampling


def stratified_pick(
    n_items: int,
    stratum_of: Callable[[int], Hashable],
    fraction: float,
    seed: int | str,
    salt: str,
) -> list[bool]:
    """Flags selecting ``fraction`` of ``range(n_items)``, stratified by ``stratum_of(i)`` and seeded.

    Deterministic for a given (seed, salt, strata); independent of Python's hash seed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    strata: dict[str, list[int]] = defaultdict(list)
    for i in range(n_items):
        strata[repr(stratum_of(i))].append(i)
    ordered: list[int] = []
    for name in sorted(strata):
        members = strata[name]
        random.Random(f"{seed}:{salt}:{name}").shuffle(members)
        ordered.extend(members)
    phase = random.Random(f"{seed}:{salt}:phase").random()
    picked = [False] * n_items
    for position, index in enumerate(ordered):
        picked[index] = math.floor((position + 1) * fraction + phase) > math.floor(position * fraction + phase)
    return picked


# ------------------------------------------------------------------------------ the protocol


def drop_excluded(
    items: Sequence[PromptItem], exclusions: Mapping[str, set[str]], report: SplitReport
) -> list[SplitRow]:
    """Rows of ``items`` (in order) minus excluded prompts, counted per dataset in ``report``.

    A prompt is excluded when its text key appears under *any* dataset of the exclusion files:
    the testbed may have seen the same text under another name.
    """
    banned = set().union(*exclusions.values()) if exclusions else set()
    rows = []
    for item in items:
        row = SplitRow.from_item(item)
        report.excluded[row.dataset] = report.excluded.get(row.dataset, 0) + (row.text_key in banned)
        if row.text_key not in banned:
            rows.append(row)
    return rows


def drop_repeats(rows: Sequence[SplitRow], report: SplitReport) -> list[SplitRow]:
    """``rows`` minus repeats of an earlier prompt (same text key), counted per dataset."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        report.duplicate[row.dataset] = report.duplicate.get(row.dataset, 0) + (row.text_key in seen)
        if row.text_key not in seen:
            seen.add(row.text_key)
            kept.append(row)
    return kept


def assign_splits(
    rows: Sequence[SplitRow],
    train_fraction: Mapping[str, float | None],
    val_fraction: float,
    seed: int,
) -> list[SplitRow]:
    """Give every row its split: ``eval`` for the held-back share of datasets with a train
    fraction below 1 (stratified by category), then ``val`` for ``val_fraction`` of the rest
    (stratified by dataset x prompt type), ``train`` otherwise. Order is preserved."""
    out = list(rows)
    for dataset, fraction in train_fraction.items():
        if fraction is None or fraction >= 1.0:
            continue
        members = [i for i, row in enumerate(out) if row.dataset == dataset]
        keep = stratified_pick(len(members), lambda j: out[members[j]].category or "", fraction, seed, f"eval:{dataset}")
        for j, index in enumerate(members):
            if not keep[j]:
                out[index] = replace(out[index], split="eval")
    pool = [i for i, row in enumerate(out) if row.split == "train"]
    val = stratified_pick(len(pool), lambda j: (out[pool[j]].dataset, out[pool[j]].prompt_type), val_fraction, seed, "val")
    for j, index in enumerate(pool):
        if val[j]:
            out[index] = replace(out[index], split="val")
    return out


def build_splits(
    sources: Sequence[PoolSource],
    exclusions: Mapping[str, set[str]],
    val_fraction: float,
    seed: int,
) -> tuple[list[SplitRow], SplitReport]:
    """The whole protocol: per source drop excluded prompts and draw its ``limit``; then drop
    repeats across the pool, hold the eval share out and assign the validation split."""
    from eds.datasets import sample

    report = SplitReport()
    fractions: dict[str, float | None] = {}
    rows: list[SplitRow] = []
    for source in sources:
        for name in {item.dataset for item in source.items}:
            if fractions.setdefault(name, source.train_fraction) != source.train_fraction:
                raise SplitError(f"{name} is listed twice with different train fractions")
        kept = drop_excluded(source.items, exclusions, report)
        name = source.items[0].dataset if source.items else ""
        rows.extend(sample(kept, source.limit, seed, name))  # type: ignore[arg-type]
    ids = Counter(row.item_id for row in rows)
    if any(n > 1 for n in ids.values()):
        raise SplitError(f"duplicate prompt ids in the pool: {sorted(i for i, n in ids.items() if n > 1)[:5]}")
    rows = drop_repeats(rows, report)
    rows = assign_splits(rows, fractions, val_fraction, seed)
    counts = Counter(row.split for row in rows)
    for name in TRAINING_SPLITS:
        if counts[name] == 0:
            raise SplitError(f"the {name} split is empty ({len(rows)} prompts in the pool); add data or change splits")
    check_disjoint(keys_of(rows, TRAINING_SPLITS), [row for row in rows if row.split == "eval"])
    return rows, report


# ------------------------------------------------------------------------------ hashes and checks


def keys_of(rows: Iterable[SplitRow | Mapping[str, Any]], splits: Iterable[str] = TRAINING_SPLITS) -> set[str]:
    """The text keys of the rows in the given splits."""
    wanted = set(splits)
    return {_field(row, "text_key") for row in rows if _field(row, "split") in wanted}


def split_hash(keys: Iterable[str]) -> str:
    """sha256 over the sorted, distinct text keys of a split: its identity, independent of order."""
    return hashlib.sha256("\n".join(sorted(set(keys))).encode("utf-8")).hexdigest()


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def _eval_key(item: Any) -> str:
    """The text key of an evaluation item: a ``text_key`` field, else the key of its prompt text."""
    if isinstance(item, Mapping):
        return str(item["text_key"]) if item.get("text_key") else text_key(str(item["prompt"]))
    key = getattr(item, "text_key", None)
    return str(key) if key else text_key(str(item.prompt))


def check_disjoint(train_keys: Iterable[str], eval_items: Iterable[Any]) -> None:
    """Raise :class:`SplitLeakError` if any evaluation item's text is in ``train_keys``.

    ``eval_items`` are mappings or objects with ``text_key`` or ``prompt`` (and ideally
    ``item_id``), e.g. :class:`~eds.datasets.PromptItem` or rows of ``splits.parquet``.
    """
    train = set(train_keys)
    leaked = [item for item in eval_items if _eval_key(item) in train]
    if leaked:
        shown = ", ".join(str(_safe_id(item)) for item in leaked[:5])
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        raise SplitLeakError(
            f"{len(leaked)} evaluation prompt(s) also appear in a training split: {shown}{more}. "
            "Evaluate only on prompts the EBMs never saw (see data/splits/manifest.json)."
        )


def _safe_id(item: Any) -> str:
    try:
        return str(_field(item, "item_id"))
    except (KeyError, AttributeError):
        return repr(_field(item, "prompt"))[:60]


def manifest(rows: Sequence[SplitRow], report: SplitReport, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Counts per split / dataset / prompt type, a hash per split, and the dropped rows."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        by_dataset = counts.setdefault(row.split, {}).setdefault(row.dataset, {})
        by_dataset[row.prompt_type] = by_dataset.get(row.prompt_type, 0) + 1
    return {
        "n": {name: sum(row.split == name for row in rows) for name in SPLITS},
        "counts": counts,
        "sha256": {name: split_hash(row.text_key for row in rows if row.split == name) for name in SPLITS},
        "dropped": {"excluded": report.excluded, "duplicate": report.duplicate},
        **(extra or {}),
    }


def read_splits(path: str | Path) -> list[SplitRow]:
    """The rows of a ``splits.parquet`` written by the split stage."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split artifact; run the split stage first")
    return [SplitRow(**row) for row in pq.read_table(path).to_pylist()]


__all__ = [
    "SPLITS",
    "TRAINING_SPLITS",
    "SplitError",
    "SplitLeakError",
    "SplitReport",
    "SplitRow",
    "assign_splits",
    "build_splits",
    "check_disjoint",
    "PoolSource",
    "drop_excluded",
    "drop_repeats",
    "keys_of",
    "load_exclusions",
    "manifest",
    "read_splits",
    "split_hash",
    "stratified_pick",
    "write_exclusions",
]
