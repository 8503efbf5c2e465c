"""Stage ``generate``: greedy responses to the training prompts, in resumable parquet shards.

Its prompts are the ``train`` and ``val`` rows of the split artifact (``data/splits``, written
by the split stage), in pool order; the ``eval`` rows are never answered here.

Output: ``data/responses/shard-NNNNN.parquet`` + ``manifest.json``. Each row holds the prompt
(id, dataset, type, category, text), the response, the model and the decoding parameters.
The manifest's key fingerprints the prompts, model and decoding; killed midway, a rerun with
the same key keeps the finished shards and generates only the missing ones (no duplicate, no
lost row); a changed key starts afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eds.config import Params
from eds.datasets import PromptItem
from eds.generation import Decoding, generate
from eds.models import describe, load_model, model_record
from eds.records import ShardedTable, chunks, fingerprint
from eds.splits import TRAINING_SPLITS, read_splits
from eds.tracking import stage_run
from pipelines.paths import RESPONSES, SPLITS

log = logging.getLogger(__name__)


def training_prompts(path: str | Path = SPLITS) -> list[PromptItem]:
    """The ``train`` and ``val`` prompts of the split artifact, in pool order."""
    items = [row.to_item() for row in read_splits(path) if row.split in TRAINING_SPLITS]
    ids = [item.item_id for item in items]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate prompt ids")
    if not items:
        raise ValueError(f"{path}: no train or val prompts")
    return items


def decoding(params: Params) -> Decoding:
    g = params.generate
    return Decoding(max_new_tokens=g.max_new_tokens, max_prompt_tokens=g.max_prompt_tokens, batch_size=g.batch_size)


def _rows(items: Sequence[PromptItem], model_name: str, dec: Decoding) -> list[dict[str, Any]]:
    return [
        {
            "item_id": item.item_id,
            "dataset": item.dataset,
            "prompt_type": item.prompt_type,
            "category": item.category,
            "prompt": item.prompt,
            "model": model_name,
            "decoding": json.dumps(dec.as_record(), sort_keys=True),
        }
        for item in items
    ]


def run(params: Params) -> dict[str, Any]:
    items = training_prompts(SPLITS)
    dec = decoding(params)
    model_name = describe(params.model)
    key = fingerprint(
        {
            "model": model_record(params.model),
            "decoding": dec.as_record(),
            "prompts": [(i.item_id, i.prompt, i.prompt_type) for i in items],
            "shard_size": params.generate.shard_size,
        }
    )
    shards = list(chunks(items, params.generate.shard_size))
    table = ShardedTable(RESPONSES, key, [len(s) for s in shards]).open()
    pending = table.pending()
    log.info("generate: %d prompts in %d shards, %d to do", len(items), len(shards), len(pending))
    with stage_run(params, "generate") as run_log:
        if pending:
            loaded = load_model(params.model)
            todo = sum(len(shards[i]) for i in pending)
            with tqdm(total=todo, desc="generate", unit="prompt") as bar:
                for index in pending:
                    shard = shards[index]
                    outputs = generate(loaded, [item.prompt for item in shard], dec, on_batch=bar.update)
                    rows = _rows(shard, model_name, dec)
                    for row, out in zip(rows, outputs):
                        row.update(
                            response=out.text,
                            n_prompt_tokens=out.n_prompt_tokens,
                            n_new_tokens=out.n_new_tokens,
                            truncated=out.truncated,
                        )
                    table.write(index, rows)
        table.finish({"n_rows": len(items), "model": model_name, "decoding": dec.as_record()})
        summary = {"n_prompts": len(items), "n_shards": len(shards), "generated_shards": len(pending)}
        run_log.log_metrics({"n_prompts": len(items), "generated_shards": len(pending)})
    return summary
