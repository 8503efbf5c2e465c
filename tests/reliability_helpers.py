"""Helpers of the reliability tests (bad inputs, fault injection, properties): small projects on
the tiny random Llama, hand-made activation stores written with the real writer, in-process stage
runs, and a guard that a failed step left no partial artifact behind."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conftest import write_params

# A project small enough for in-process stage runs: no MLflow, tiny EBMs.
TINY_PROJECT: dict[str, Any] = {
    "model": {"adapter": None},
    "data": {"train": [{"name": "demo_train", "limit": 12}]},
    "splits": {"val_fraction": 0.34},
    "generate": {"batch_size": 4, "max_new_tokens": 4, "shard_size": 4},
    "extract": {"batch_size": 4, "shard_size": 4, "dtype": "float32"},
    "train": {"widths": [8, 4], "epochs": 2, "batch_size": 4, "lr": 1.0e-3},
    "select": {"k": 2},
    "tracking": {"enabled": False},
}


def write_project(folder: Path, model_dir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """``folder`` with a params.yaml (the repo's, with :data:`TINY_PROJECT` and ``overrides``)."""
    return write_params(folder, TINY_PROJECT, {"model": {"id": str(model_dir)}}, overrides or {})


def run_stage_in(folder: Path, stage: str) -> dict[str, Any]:
    """Run a registered stage in-process with ``folder`` as the working directory."""
    from pipelines.registry import run_stage

    with contextlib.chdir(folder):
        return run_stage(stage)


@contextlib.contextmanager
def nothing_left(folder: Path, *paths: str) -> Iterator[None]:
    """Around a step that must fail: afterwards none of ``paths`` (relative to ``folder``) exists.

    A partial artifact is an :class:`AssertionError` that replaces the step's own error, so a test
    expecting that error fails loudly.
    """
    try:
        yield
    finally:
        left = [p for p in paths if (folder / p).exists()]
        if left:
            raise AssertionError(f"partial artifacts left after a failed step: {left}")


def craft_store(
    folder: Path,
    data: np.ndarray,
    labels: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    shard_size: int = 4,
    dtype: str = "float32",
) -> list[list[str]]:
    """A complete activation store of ``data [layers, rows, hidden]`` written by the real
    :class:`~eds.activation_store.ActivationWriter`; returns the shard plan (item ids)."""
    from eds.activation_store import ActivationWriter

    n_layers, n_rows, hidden = data.shape
    labels = list(labels) if labels is not None else ["good" if i % 2 == 0 else "bad" for i in range(n_rows)]
    splits = list(splits) if splits is not None else ["val" if i % 3 == 2 else "train" for i in range(n_rows)]
    items = [f"demo_train:{i:05d}" for i in range(n_rows)]
    plan = [items[start : start + shard_size] for start in range(0, n_rows, shard_size)]
    writer = ActivationWriter(folder, "crafted", plan, n_layers, hidden, dtype).open()
    for index in writer.pending():
        start = index * shard_size
        writer.write_shard(index, data[:, start : start + len(plan[index])])
    rows = [
        {"item_id": item, "dataset": "demo_train", "prompt_type": "benign" if i % 2 else "harmful", "category": None,
         "label": labels[i], "split": splits[i]}
        for i, item in enumerate(items)
    ]  # fmt: skip
    writer.finish(rows, {"model": "crafted", "position": "last_prompt_token"})
    return plan


def reseal_shard(folder: Path, shard: int) -> None:
    """Record a shard's current sha256 in the store's manifest (as if its writer had produced it)."""
    import json

    from eds.activation_store import MANIFEST, shard_name
    from eds.records import file_sha256

    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["shards"][shard_name(shard)] = file_sha256(folder / shard_name(shard))
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def tree_hashes(root: Path, outputs: Sequence[str]) -> dict[str, str]:
    """sha256 of every file under each output path (a file or a folder), keyed by relative path."""
    hashes: dict[str, str] = {}
    for out in outputs:
        path = root / out
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            hashes[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
