"""The per-shard work of the sharded stages, done exactly as the stages do it.

``generate`` (parquet shards, :class:`eds.records.ShardedTable`) and ``extract`` (HDF5 shards,
:class:`eds.activation_store.ActivationWriter`) are resumable: a rerun keeps every finished shard
whose manifest key still matches. So any process can write any shard, and the stage itself,
run afterwards by DVC, only finishes what is already there. Each :class:`ShardedStage` has:

* ``prepare(params, root)``: open the output (creating or resetting it once, before any worker
  writes) and return the manifest key and the pending shard indices. Extract's needs the model
  (for the layer count and width), so it runs as a task on a worker, not in the coordinator;
* ``write(params, root, key, index)``: compute and write one shard (in a worker);
* ``finish(params, root)``: what the stage writes after its last shard, when that needs no model
  (generate's manifest). Extract's index needs the tokenizer, so its DVC stage writes it.

The plans mirror ``pipelines.generate.run`` and ``pipelines.extract.run`` (same prompts, same
fingerprint, same shard boundaries and batches), so the bytes written are the same.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eds import config
from eds.datasets import PromptItem
from eds.generation import Decoding, generate
from eds.models import LoadedModel, describe, load_model, model_record
from eds.records import ShardedTable, chunks, fingerprint
from pipelines import generate as generate_stage
from pipelines.paths import ACTIVATIONS, LABELS, RESPONSES, SPLITS

_MODELS: dict[str, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(params: config.Params) -> LoadedModel:
    """One loaded model per worker process, reused by every shard task it runs."""
    key = json.dumps(model_record(params.model), sort_keys=True)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(params.model)
        return _MODELS[key]


@dataclass(frozen=True)
class ShardedStage:
    name: str
    prepare: Callable[[config.Params, Path], tuple[str, list[int], int]]
    write: Callable[[config.Params, Path, str, int], int]
    finish: Callable[[config.Params, Path], None] | None = None
    prepare_loads_model: bool = False  # then prepare runs on a worker, not the coordinator


# ------------------------------------------------------------------------------ generate


@dataclass(frozen=True)
class GeneratePlan:
    """What ``pipelines.generate.run`` computes before generating: prompts, shards, manifest key."""

    items: list[PromptItem]
    decoding: Decoding
    model_name: str
    key: str
    shards: list[Sequence[PromptItem]]

    def table(self, root: Path) -> ShardedTable:
        return ShardedTable(root / RESPONSES, self.key, [len(s) for s in self.shards])

    def manifest_extra(self) -> dict[str, Any]:
        return {"n_rows": len(self.items), "model": self.model_name, "decoding": self.decoding.as_record()}


def generate_plan(params: config.Params, root: Path) -> GeneratePlan:
    """The generate stage's plan, exactly as ``pipelines.generate.run`` builds it (same key)."""
    items = generate_stage.training_prompts(root / SPLITS)
    dec = generate_stage.decoding(params)
    key = fingerprint(
        {
            "model": model_record(params.model),
            "decoding": dec.as_record(),
            "prompts": [(i.item_id, i.prompt, i.prompt_type) for i in items],
            "shard_size": params.generate.shard_size,
        }
    )
    return GeneratePlan(items, dec, describe(params.model), key, list(chunks(items, params.generate.shard_size)))


def _generate_prepare(params: config.Params, root: Path) -> tuple[str, list[int], int]:
    plan = generate_plan(params, root)
    return plan.key, plan.table(root).open().pending(), len(plan.shards)


def _generate_write(params: config.Params, root: Path, key: str, index: int) -> int:
    plan = generate_plan(params, root)
    _check_key("generate", plan.key, key, index)
    shard = plan.shards[index]
    outputs = generate(worker_model(params), [item.prompt for item in shard], plan.decoding)
    rows = generate_stage._rows(shard, plan.model_name, plan.decoding)
    for row, out in zip(rows, outputs):
        row.update(
            response=out.text, n_prompt_tokens=out.n_prompt_tokens, n_new_tokens=out.n_new_tokens, truncated=out.truncated
        )
    plan.table(root).write(index, rows)
    return len(rows)


def _generate_finish(params: config.Params, root: Path) -> None:
    plan = generate_plan(params, root)
    plan.table(root).finish(plan.manifest_extra())  # the same manifest pipelines.generate.run writes


# ------------------------------------------------------------------------------ extract


def _extract_writer(params: config.Params, root: Path) -> tuple[Any, list[list[dict[str, Any]]]]:
    """The extract stage's writer and shards, exactly as ``pipelines.extract.run`` builds them."""
    from eds.activation_store import ActivationWriter
    from eds.activations import decoder_layers
    from pipelines import extract as extract_stage

    cfg = params.extract
    rows = extract_stage.labelled_rows(root / LABELS, root / SPLITS)
    key = fingerprint(
        {
            "model": model_record(params.model),
            "max_prompt_tokens": params.generate.max_prompt_tokens,
            "extract": cfg.model_dump(mode="json"),
            "rows": [(row["item_id"], row["prompt"]) for row in rows],
        }
    )
    loaded = worker_model(params)  # the layer count and width come from the model
    n_layers, hidden = len(decoder_layers(loaded.model)), int(loaded.model.config.hidden_size)
    shards = [list(s) for s in chunks(rows, cfg.shard_size)]
    items = [[r["item_id"] for r in s] for s in shards]
    writer = ActivationWriter(root / ACTIVATIONS, key, items, n_layers, hidden, cfg.dtype, cfg.compression)
    return writer, shards


def _extract_prepare(params: config.Params, root: Path) -> tuple[str, list[int], int]:
    writer, shards = _extract_writer(params, root)
    return writer.key, writer.open().pending(), len(shards)


def _extract_write(params: config.Params, root: Path, key: str, index: int) -> int:
    import torch

    from eds.activations import extract_states, prepare_prompts

    writer, shards = _extract_writer(params, root)
    _check_key("extract", writer.key, key, index)
    writer = writer.open()  # the folder already holds this plan (prepare ran first): nothing is reset
    loaded = worker_model(params)
    prepared = prepare_prompts(loaded, [row["prompt"] for row in shards[index]], params.generate.max_prompt_tokens)
    states = extract_states(loaded, prepared, params.extract.batch_size, torch.float32)
    writer.write_shard(index, states.numpy())
    return len(prepared)


def _check_key(stage: str, actual: str, expected: str, index: int) -> None:
    if actual != expected:
        raise RuntimeError(f"{stage} shard {index}: params or inputs changed during the run ({actual[:12]} != {expected[:12]})")


STAGES: dict[str, ShardedStage] = {
    "generate": ShardedStage("generate", _generate_prepare, _generate_write, _generate_finish),
    "extract": ShardedStage("extract", _extract_prepare, _extract_write, prepare_loads_model=True),
}
