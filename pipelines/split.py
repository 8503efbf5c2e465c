"""Stage ``split``: the training pool, its validation share and the held-out evaluation split.

Reads every dataset of ``data.train``, drops prompts listed in the ``splits.exclude`` files, draws
each dataset's ``limit`` from what is left, drops repeats, keeps ``train_fraction`` of a dataset
for training (the rest is the ``eval`` split) and holds ``splits.val_fraction`` of the training
pool out for validation (see :mod:`eds.splits`).

Output: ``data/splits/splits.parquet`` (item_id, dataset, prompt, prompt_type, category,
text_key, split) and ``data/splits/manifest.json`` (counts per split / dataset / prompt type, a
sha256 per split over its sorted text keys, the rows dropped per dataset and why, and the
sha256 of each exclusion file). The generate stage answers the ``train`` and ``val`` rows.
"""

from __future__ import annotations

import logging
from typing import Any

from eds import datasets
from eds.config import Params
from eds.datasets import PromptItem
from eds.records import atomic_write_json, atomic_write_parquet, file_sha256
from eds.splits import PoolSource, SplitRow, build_splits, load_exclusions, manifest
from eds.tracking import stage_run
from pipelines.paths import SPLITS, SPLITS_MANIFEST

log = logging.getLogger(__name__)


def load_pool(params: Params) -> list[PoolSource]:
    """Every dataset of ``data.train`` (config order), whole: its ``limit`` is drawn by
    :func:`eds.splits.build_splits` after the excluded prompts are gone."""
    pool: list[PoolSource] = []
    for ref in params.data.train:
        loaded = datasets.load(ref.name, split=ref.split, source=params.data.source, root=params.data_root())
        if not all(isinstance(item, PromptItem) for item in loaded):
            kind = datasets.REGISTRY[ref.name].kind
            raise ValueError(f"data.train: {ref.name} is not a prompt dataset (kind {kind})")
        items = [item for item in loaded if isinstance(item, PromptItem)]
        pool.append(PoolSource(items, ref.train_fraction, ref.limit))
    return pool


def run(params: Params) -> dict[str, Any]:
    exclusions = load_exclusions(params.splits.exclude)
    pool = load_pool(params)
    rows, report = build_splits(pool, exclusions, params.splits.val_fraction, params.project.seed)
    extra = {
        "seed": params.project.seed,
        "val_fraction": params.splits.val_fraction,
        "train_fraction": {ref.name: ref.train_fraction for ref in params.data.train},
        "exclude": {str(path): file_sha256(path) for path in params.splits.exclude},
    }
    info = manifest(rows, report, extra)
    with stage_run(params, "split") as run_log:
        atomic_write_parquet(SPLITS, [row.as_record() for row in rows], schema=_schema())
        atomic_write_json(SPLITS_MANIFEST, info)
        run_log.log_metrics({f"n_{name}": n for name, n in info["n"].items()})
        run_log.log_metrics({f"dropped/{why}/{name}": n for why, by in info["dropped"].items() for name, n in by.items()})
    for name in report.excluded:
        if report.excluded[name] or report.duplicate[name]:
            log.info("split: %s: dropped %d excluded, %d repeated prompts", name, report.excluded[name], report.duplicate[name])
    log.info("split: %s", ", ".join(f"{name} {n}" for name, n in info["n"].items()))
    return {"n": info["n"], "dropped": info["dropped"], "sha256": info["sha256"]}


def _schema():  # noqa: ANN202 - pyarrow schema; a fixed one keeps an empty category column typed
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in SplitRow.__dataclass_fields__])


__all__ = ["load_pool", "run"]
