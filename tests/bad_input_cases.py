"""The bad-input cases on artifacts (activation store, EBMs, training) and models, declared for
``tests/test_bad_inputs.py`` (which adds the params, dataset and prompt cases, runs them all and
renders ``docs/bad-inputs.md``). Every case runs the real code path: the stages in-process on a
small project, :class:`~eds.activation_store.ActivationStore` reads, :func:`~eds.ebm.load_ebm`,
:func:`~eds.training.train_layers`, :func:`~eds.models.load_model`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from eds.activation_store import StoreError
from eds.config import ConfigError
from eds.ebm import EBMLoadError
from eds.models import ModelLoadError
from eds.training import TrainingError
from reliability_helpers import craft_store, nothing_left, reseal_shard, run_stage_in, write_project


@dataclass(frozen=True)
class Ctx:
    tmp: Path  # a fresh folder of this case
    tiny: Path  # the tiny random Llama (2 layers, hidden 32)


@dataclass(frozen=True)
class Case:
    area: str
    name: str
    tried: str  # the bad input, for the table
    expected: str  # the required behaviour, for the table
    run: Callable[[Ctx], object]  # raises, or returns the observed outcome (documented behaviour)
    raises: type[BaseException] | None
    match: str  # regex searched in the error message (or the returned outcome)


CASES: list[Case] = []


Run = Callable[[Ctx], object]


def case(area: str, name: str, tried: str, expected: str, raises: type[BaseException] | None, match: str) -> Callable[[Run], Run]:
    """Register the decorated function as a case."""

    def register(run: Run) -> Run:
        CASES.append(Case(area, name, tried, expected, run, raises, match))
        return run

    return register


STORE = "data/activations"
TRAINED = ("models/ebm", "reports/metrics/train.json")


def _store(ctx: Ctx, overrides: dict[str, Any] | None = None, labels: list[str] | None = None) -> Path:
    """A project on the tiny model holding a hand-made 2-layer, 12-row, 8-wide store (3 shards of 4)."""
    project = write_project(ctx.tmp / "project", ctx.tiny, overrides)
    craft_store(project / STORE, np.random.default_rng(0).normal(size=(2, 12, 8)).astype(np.float32), labels)
    return project


# ------------------------------------------------------------------------------ activation store


@case("activation store", "truncated HDF5 shard", "`shard-00001.h5` cut to half its size, then the train stage",
      "StoreError naming the shard; no EBM written", StoreError, r"shard-00001\.h5: sha256 checksum mismatch")
def _truncated_shard(ctx: Ctx) -> None:
    project = _store(ctx)
    shard = project / STORE / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with nothing_left(project, *TRAINED):
        run_stage_in(project, "train")


@case("activation store", "bit-flipped HDF5 shard", "one byte flipped in the middle of `shard-00002.h5`, then a layer read "
      "(as select and evaluate read)", "StoreError naming the shard", StoreError, r"shard-00002\.h5: sha256 checksum mismatch")
def _flipped_shard(ctx: Ctx) -> None:
    from eds.activation_store import ActivationStore

    project = _store(ctx)
    shard = project / STORE / "shard-00002.h5"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    shard.write_bytes(bytes(blob))
    ActivationStore(project / STORE).read_layer(1)


@case("activation store", "missing HDF5 shard", "`shard-00000.h5` deleted, then a read", "StoreError naming the shard",
      StoreError, r"shard-00000\.h5: shard missing")
def _missing_shard(ctx: Ctx) -> None:
    from eds.activation_store import ActivationStore

    project = _store(ctx)
    (project / STORE / "shard-00000.h5").unlink()
    ActivationStore(project / STORE).read()


def _edit_index(ctx: Ctx, row: int, **fields: int) -> None:
    from eds.activation_store import ActivationStore

    project = _store(ctx)
    path = project / STORE / "index.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[row].update(fields)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    ActivationStore(project / STORE)


@case("activation store", "index offset past a shard", "`index.parquet` row 5 set to offset 9 of a 4-row shard",
      "StoreError naming the row and the shard, on open", StoreError, r"index row 5 points at offset 9, past the end of shard-00001")
def _index_past_shard(ctx: Ctx) -> None:
    _edit_index(ctx, 5, offset=9)


@case("activation store", "index row on a missing shard", "`index.parquet` row 2 set to shard 7 (the store has 3)",
      "StoreError naming the row", StoreError, r"index row 2 points at shard 7, but the store has 3 shards")
def _index_bad_shard(ctx: Ctx) -> None:
    _edit_index(ctx, 2, shard=7)


@case("activation store", "two index rows on one slot", "`index.parquet` row 1 set to shard 0 offset 0 (row 0's)",
      "StoreError naming both rows", StoreError, r"index rows 0 and 1 both point at shard-00000\.h5 offset 0")
def _index_duplicate(ctx: Ctx) -> None:
    _edit_index(ctx, 1, offset=0)


@case("activation store", "NaN activations (stored)", "NaN written into `shard-00001.h5` at layer 1, offset 2, with a "
      "matching checksum, then the train stage", "StoreError naming the layer and row; no EBM written", StoreError,
      r"non-finite activation at layer 1, row 6 \(item demo_train:00006, shard-00001\.h5 offset 2\)")
def _nan_stored(ctx: Ctx) -> None:
    project = _store(ctx)
    with h5py.File(project / STORE / "shard-00001.h5", "r+") as handle:
        handle["h"][1, 2, 3] = np.nan
    reseal_shard(project / STORE, 1)
    with nothing_left(project, *TRAINED):
        run_stage_in(project, "train")


@case("activation store", "NaN activations (at extraction)", "a shard of states holding NaN handed to the writer",
      "StoreError; the store stays marked incomplete, so no reader accepts it", StoreError,
      r"shard 0: non-finite activations.*incomplete")
def _nan_written(ctx: Ctx) -> None:
    from eds.activation_store import ActivationStore, ActivationWriter

    folder = ctx.tmp / "store"
    writer = ActivationWriter(folder, "k", [["a", "b"]], 1, 2, "float32").open()
    try:
        writer.write_shard(0, np.array([[[1.0, np.nan], [0.0, 1.0]]], dtype=np.float32))
    except StoreError as err:
        error = err
    else:
        raise AssertionError("the writer accepted NaN")
    try:
        ActivationStore(folder)
    except StoreError as refused:
        raise StoreError(f"{error} / then opening it: {refused}") from None
    raise AssertionError("a store whose shard failed opened as complete")


@case("activation store", "no manifest", "`data/activations/manifest.json` deleted", "StoreError saying to run extract",
      StoreError, r"no readable manifest\.json; run the extract stage first")
def _no_manifest(ctx: Ctx) -> None:
    from eds.activation_store import ActivationStore

    project = _store(ctx)
    (project / STORE / "manifest.json").unlink()
    ActivationStore(project / STORE)


# ------------------------------------------------------------------------------ EBMs and training


@case("EBM", "EBM hidden size differs from the model's", "EBMs trained on 8-wide states, then the select stage on a "
      "12-wide store", "EBMLoadError naming both sizes; no selection written", EBMLoadError,
      r"EBM reads hidden size 8, but the model's hidden size is 12")
def _ebm_hidden_size(ctx: Ctx) -> None:
    project = _store(ctx)
    run_stage_in(project, "train")
    shutil.rmtree(project / STORE)
    craft_store(project / STORE, np.random.default_rng(1).normal(size=(2, 12, 12)).astype(np.float32))
    with nothing_left(project, "models/selection.json", "reports/metrics/select.json"):
        run_stage_in(project, "select")


@case("EBM", "truncated EBM weights", "`layer_00.safetensors` cut to 100 bytes, then `load_ebm`",
      "EBMLoadError naming the file", EBMLoadError, r"layer_00\.safetensors: cannot read EBM weights")
def _ebm_truncated(ctx: Ctx) -> None:
    from eds.ebm import load_ebm

    project = _store(ctx)
    run_stage_in(project, "train")
    weights = project / "models/ebm/layer_00.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    load_ebm(weights, hidden_size=8)


@case("training", "NaN loss during EBM training", "`train.lr: 1e30` (the loss diverges in epoch 1), the train stage",
      "TrainingError naming the epoch and layers; no EBM and no train metrics written", TrainingError,
      r"loss became non-finite \(NaN/inf\) at epoch 1 for layer\(s\) \[0, 1\]")
def _nan_loss(ctx: Ctx) -> None:
    project = _store(ctx, overrides={"train": {"lr": 1.0e30}})
    with nothing_left(project, *TRAINED):
        run_stage_in(project, "train")


@case("training", "NaN activations handed to the trainer", "`train_layers` on states with a NaN at layer 1, row 5",
      "TrainingError naming the layer and row", TrainingError, r"non-finite activations at layer 1, row 5")
def _nan_features(ctx: Ctx) -> None:
    from eds.ebm import EBMSpec
    from eds.training import TrainSettings, train_layers

    features = torch.randn(2, 12, 8)
    features[1, 5, 3] = float("nan")
    good = torch.arange(12) % 2 == 0
    train_layers(features, good, torch.arange(8), torch.arange(8, 12), EBMSpec(8, (4,)), TrainSettings(epochs=1))


@case("training", "one class only", "every stored row labelled good, then the train stage",
      "ValueError saying which split lacks which class; no EBM written", ValueError,
      r"the train split needs good and bad examples \(got 8 good, 0 bad\)")
def _one_class(ctx: Ctx) -> None:
    project = _store(ctx, labels=["good"] * 12)
    with nothing_left(project, *TRAINED):
        run_stage_in(project, "train")


# ------------------------------------------------------------------------------ layer params (checked by the stages)


@case("params", "`select.k` larger than the layer count", "`select.k: 3` on a 2-layer model's store, the select stage",
      "ConfigError naming `select.k`; no selection written", ConfigError, r"select\.k: 3 is more than the model's 2 layers")
def _k_too_large(ctx: Ctx) -> None:
    project = _store(ctx, overrides={"select": {"k": 3}})
    with nothing_left(project, "models/selection.json"):
        run_stage_in(project, "select")


@case("params", "`steer.layers` out of range", "`steer.layers: [1, 5]` on a 2-layer model's store, the evaluate stage",
      "ConfigError naming `steer.layers` before any model loads; nothing written", ConfigError,
      r"steer\.layers: \[5\] out of range: the model has 2 layers \(0\.\.1\)")
def _steer_layers(ctx: Ctx) -> None:
    project = _store(ctx, overrides={"steer": {"layers": [1, 5]}})
    with nothing_left(project, "data/eval", "reports/metrics.json", "reports/eval"):
        run_stage_in(project, "evaluate")


@case("params", "`evaluate.ablation_layer` out of range", "`evaluate.ablation_layer: 2` on a 2-layer model's store",
      "ConfigError naming the key; nothing written", ConfigError, r"evaluate\.ablation_layer: layer 2 out of range")
def _ablation_layer(ctx: Ctx) -> None:
    project = _store(ctx, overrides={"evaluate": {"ablation_layer": 2}})
    with nothing_left(project, "data/eval", "reports/metrics.json", "reports/eval"):
        run_stage_in(project, "evaluate")


# ------------------------------------------------------------------------------ models


@case("model", "model id not found offline", "`model.id: no-such-org/no-such-model` with `HF_HUB_OFFLINE=1`",
      "ModelLoadError naming the id and the offline switch", ModelLoadError,
      r"cannot load model 'no-such-org/no-such-model' \(HF_HUB_OFFLINE=1")
def _model_offline(ctx: Ctx) -> None:
    from eds.config import ModelConfig
    from eds.models import load_model

    load_model(ModelConfig(id="no-such-org/no-such-model"))
