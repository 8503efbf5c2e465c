"""Stage ``extract``: every decoder layer's residual input at the last prompt token, sharded HDF5.

For every labelled (prompt, response) pair of ``data/labels.parquet`` (joined with its split from
``data/splits/splits.parquet``), one forward pass over the chat-formatted prompt (truncated as in
generation) captures the input of every decoder layer at the last prompt token
(:mod:`eds.activations`). Output: ``data/activations/`` (see :mod:`eds.activation_store`):
``shard-NNNNN.h5`` with ``h [layers, rows, hidden]``, ``index.parquet`` (row -> shard, offset,
item id, dataset, prompt type, category, split, label, refused, judge, prompt tokens) and
``manifest.json`` (sha256 per shard). Killed midway, a rerun keeps the finished shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from eds.activation_store import ActivationWriter
from eds.activations import PreparedPrompt, decoder_layers, extract_states, prepare_prompts
from eds.config import Params
from eds.datasets import text_key
from eds.models import describe, load_model, model_record
from eds.records import chunks, fingerprint, read_parquet_rows
from eds.splits import read_splits
from eds.tracking import stage_run
from pipelines.paths import ACTIVATIONS, LABELS, SPLITS

log = logging.getLogger(__name__)

INDEX_FIELDS = ("item_id", "dataset", "prompt_type", "category", "label", "refused", "judge", "judge_version")


def labelled_rows(labels_path: Path = LABELS, splits_path: Path = SPLITS) -> list[dict[str, Any]]:
    """The label rows (in their order), each with its split; every row must be a train/val row."""
    split_of = {row.item_id: row.split for row in read_splits(splits_path)}
    rows = read_parquet_rows(labels_path)
    missing = [row["item_id"] for row in rows if row["item_id"] not in split_of]
    if missing:
        raise ValueError(f"{labels_path}: {len(missing)} rows not in {splits_path} (e.g. {missing[:3]}); rerun the pipeline")
    evaluation = [row["item_id"] for row in rows if split_of[row["item_id"]] == "eval"]
    if evaluation:
        raise ValueError(f"{labels_path}: {len(evaluation)} evaluation prompts were labelled for training: {evaluation[:3]}")
    return [{**row, "split": split_of[row["item_id"]]} for row in rows]


def index_rows(rows: Sequence[dict[str, Any]], prepared: Sequence[PreparedPrompt]) -> list[dict[str, Any]]:
    """The index fields of each row (without shard/offset, which the writer adds)."""
    return [
        {
            **{k: row.get(k) for k in INDEX_FIELDS},
            "split": row["split"],
            "text_key": text_key(row["prompt"]),
            "n_prompt_tokens": p.n_tokens,
            "truncated": p.truncated,
        }
        for row, p in zip(rows, prepared, strict=True)
    ]


def run(params: Params) -> dict[str, Any]:
    cfg = params.extract
    rows = labelled_rows()
    key = fingerprint(
        {
            "model": model_record(params.model),
            "max_prompt_tokens": params.generate.max_prompt_tokens,
            "extract": cfg.model_dump(mode="json"),
            "rows": [(row["item_id"], row["prompt"]) for row in rows],
        }
    )
    loaded = load_model(params.model)
    n_layers = len(decoder_layers(loaded.model))
    hidden = int(loaded.model.config.hidden_size)
    shards = list(chunks(rows, cfg.shard_size))
    writer = ActivationWriter(
        ACTIVATIONS, key, [[r["item_id"] for r in s] for s in shards], n_layers, hidden, cfg.dtype, cfg.compression
    ).open()
    pending = set(writer.pending())
    log.info("extract: %d rows, %d layers x %d, %d shards, %d to do", len(rows), n_layers, hidden, len(shards), len(pending))
    prepared = prepare_prompts(loaded, [row["prompt"] for row in rows], params.generate.max_prompt_tokens)
    n_tokens, seconds = 0, 0.0
    with stage_run(params, "extract") as run_log:
        with tqdm(total=sum(len(shards[i]) for i in pending), desc="extract", unit="prompt") as bar:
            for index, shard_prepared in enumerate(chunks(prepared, cfg.shard_size)):
                if index not in pending:
                    continue
                start = time.perf_counter()
                states = extract_states(loaded, shard_prepared, cfg.batch_size, torch.float32, on_batch=bar.update)
                seconds += time.perf_counter() - start
                n_tokens += sum(p.n_tokens for p in shard_prepared)
                writer.write_shard(index, states.numpy())
        manifest = writer.finish(index_rows(rows, prepared), {"model": describe(params.model), "position": "last_prompt_token"})
        rate = n_tokens / seconds if seconds else 0.0
        run_log.log_metrics({"n_rows": len(rows), "extracted_shards": len(pending), "prompt_tokens_per_s": rate})
    log.info("extract: wrote %d shards (%d prompt tokens/s)", len(pending), rate)
    return {
        "n_rows": len(rows),
        "n_layers": n_layers,
        "hidden_size": hidden,
        "n_shards": len(shards),
        "extracted_shards": len(pending),
        "prompt_tokens_per_s": round(rate, 1),
        "index_sha256": manifest["index_sha256"],
    }
