"""Property-based tests (hypothesis): params validation and the activation store's index.

* Random valid params (any subset of the keys below, merged into the repo's params.yaml) parse to
  exactly those values and round-trip through ``model_dump``; a random invalid value, or an
  unknown key, raises :class:`~eds.config.ConfigError` naming that key.
* Random store layouts (shard sizes, layers, width, dtype, a random subset written before a
  "kill" and the rest on resume, in random order) written by the real writer: every index row
  maps to one valid (shard, offset), no slot is used twice, reads in any row/layer order give the
  written vectors, and an index row pushed past its shard is an error naming the row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from eds.activation_store import INDEX, ActivationStore, ActivationWriter, StoreError
from eds.config import ConfigError, Params, deep_merge, parse

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
REPO_PARAMS: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))

floats = st.floats  # bounded on both sides: finite; open on one side: may be infinite (invalid anyway)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "project.seed": st.integers(0, 2**31),
    "generate.batch_size": st.integers(1, 4096),
    "generate.max_new_tokens": st.integers(1, 8192),
    "generate.max_prompt_tokens": st.integers(8, 10**6),
    "generate.shard_size": st.integers(1, 10**5),
    "extract.dtype": st.sampled_from(["float16", "float32"]),
    "extract.compression": st.sampled_from(["none", "lzf"]),
    "splits.val_fraction": floats(0.001, 0.999),
    "train.widths": st.lists(st.integers(1, 4096), min_size=1, max_size=5),
    "train.lr": floats(1e-9, 10.0),
    "train.tau": floats(1e-4, 100.0),
    "train.dropout": floats(0.0, 0.99),
    "train.epochs": st.integers(1, 1000),
    "train.patience": st.none() | st.integers(1, 100),
    "select.k": st.integers(1, 128),
    "select.metric": st.sampled_from(["auroc", "pairwise_accuracy"]),
    "steer.eta": floats(1e-6, 1e6),
    "steer.steps": st.integers(1, 50),
    "steer.normalize": st.sampled_from(["none", "unit"]),
    "steer.layers": st.none() | st.lists(st.integers(0, 80), min_size=1, max_size=5),
    "evaluate.sweep.eta": st.lists(floats(1e-3, 100.0), max_size=4),
    "evaluate.max_new_tokens": st.integers(1, 8192),
}
NOT_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "project.seed": st.integers(max_value=-1) | st.text(max_size=4),
    "generate.batch_size": st.integers(max_value=0) | st.text(max_size=4) | floats(0.5, 64.0),
    "generate.max_new_tokens": st.integers(max_value=0) | st.integers(min_value=8193),
    "generate.max_prompt_tokens": st.integers(max_value=7),
    "extract.dtype": st.text(max_size=8).filter(lambda t: t not in ("float16", "float32")),
    "splits.val_fraction": floats(max_value=0.0) | floats(min_value=1.0) | NOT_FINITE,
    "train.widths": st.just([]) | st.lists(st.integers(max_value=0), min_size=1, max_size=3) | st.text(max_size=4),
    "train.lr": floats(max_value=0.0) | NOT_FINITE,
    "train.dropout": floats(max_value=-1e-9) | floats(min_value=1.0) | NOT_FINITE,
    "train.epochs": st.integers(max_value=0) | st.booleans(),
    "select.k": st.integers(max_value=0),
    "select.metric": st.text(max_size=8).filter(lambda t: t not in ("auroc", "pairwise_accuracy")),
    "steer.eta": floats(max_value=0.0) | NOT_FINITE,
    "steer.steps": st.integers(max_value=0) | floats(1.5, 9.5),
    "steer.layers": st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
    "evaluate.sweep.eta": st.lists(floats(max_value=0.0) | NOT_FINITE, min_size=1, max_size=3),
}
SECTIONS = ("project", "model", "generate", "extract", "train", "select", "steer", "evaluate")
IDENTIFIER = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def dumped(params: Params, key: str) -> Any:
    value: Any = params.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


@SETTINGS
@given(overrides=st.fixed_dictionaries({}, optional=VALID))
def test_valid_params_parse_to_their_values_and_round_trip(overrides: dict[str, Any]) -> None:
    params = parse(deep_merge(REPO_PARAMS, nested(overrides)), check_paths=False)
    for key, value in overrides.items():
        assert dumped(params, key) == value, key
    assert parse(params.model_dump(mode="json"), check_paths=False) == params


@SETTINGS
@given(data=st.data(), key=st.sampled_from(sorted(INVALID)))
def test_an_invalid_value_is_an_error_naming_its_key(data: st.DataObject, key: str) -> None:
    value = data.draw(INVALID[key], label=key)
    with pytest.raises(ConfigError) as info:
        parse(deep_merge(REPO_PARAMS, nested({key: value})), check_paths=False)
    assert f"{key}" in str(info.value), str(info.value)


@SETTINGS
@given(section=st.sampled_from(SECTIONS), name=IDENTIFIER, value=st.integers() | st.text(max_size=5))
def test_an_unknown_key_is_an_error_naming_it(section: str, name: str, value: Any) -> None:
    if name in type(getattr(Params(), section)).model_fields:
        return  # a real key
    with pytest.raises(ConfigError, match=rf"{section}\.{name}: unknown key"):
        parse(deep_merge(REPO_PARAMS, {section: {name: value}}), check_paths=False)


# ------------------------------------------------------------------------------ the activation store's index


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, Any]:
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    n_shards = len(sizes)
    before_kill = draw(st.lists(st.sampled_from(range(n_shards)), unique=True, max_size=n_shards))
    return {
        "sizes": sizes,
        "n_layers": draw(st.integers(1, 3)),
        "hidden": draw(st.integers(1, 6)),
        "dtype": draw(st.sampled_from(["float16", "float32"])),
        "before_kill": before_kill,  # shards written by a first writer that then 'dies'
        "after": draw(st.permutations([i for i in range(n_shards) if i not in before_kill])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _write(folder: Path, layout: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    sizes, n_layers, hidden = layout["sizes"], layout["n_layers"], layout["hidden"]
    items = [f"item:{i:04d}" for i in range(sum(sizes))]
    starts = np.cumsum([0, *sizes])
    plan = [items[starts[k] : starts[k + 1]] for k in range(len(sizes))]
    states = np.random.default_rng(layout["seed"]).normal(scale=4.0, size=(n_layers, len(items), hidden)).astype(np.float32)

    def writer() -> ActivationWriter:
        return ActivationWriter(folder, "key", plan, n_layers, hidden, layout["dtype"]).open()

    first = writer()
    for k in layout["before_kill"]:
        first.write_shard(k, states[:, starts[k] : starts[k + 1]])
    resumed = writer()  # a rerun after the kill keeps what is done
    assert resumed.pending() == sorted(layout["after"])
    for k in layout["after"]:
        resumed.write_shard(k, states[:, starts[k] : starts[k + 1]])
    resumed.finish([{"item_id": item, "label": "good" if i % 2 else "bad"} for i, item in enumerate(items)])
    return states.astype(layout["dtype"]), items


@SETTINGS
@given(layout=layouts(), data=st.data())
def test_store_index_maps_every_row_to_one_slot_and_reads_back(layout: dict[str, Any], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stored, items = _write(Path(tmp) / "store", layout)
        store = ActivationStore(Path(tmp) / "store", verify=True)
        slots = [(row["shard"], row["offset"]) for row in store.index]
        assert [row["row"] for row in store.index] == list(range(len(items)))
        assert [row["item_id"] for row in store.index] == items
        assert len(set(slots)) == len(slots) == sum(layout["sizes"])
        assert all(0 <= offset < layout["sizes"][shard] for shard, offset in slots)
        rows = data.draw(st.lists(st.integers(0, len(items) - 1), max_size=2 * len(items)), label="rows")
        layers = data.draw(st.lists(st.integers(0, layout["n_layers"] - 1), min_size=1, max_size=4), label="layers")
        np.testing.assert_array_equal(store.read(rows, layers), stored[layers][:, rows])
        np.testing.assert_array_equal(store.read(), stored)


@SETTINGS
@given(layout=layouts(), data=st.data())
def test_an_index_row_past_its_shard_is_named(layout: dict[str, Any], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        _, items = _write(folder, layout)
        table = pq.read_table(folder / INDEX)
        rows = table.to_pylist()
        row = data.draw(st.integers(0, len(items) - 1), label="row")
        rows[row]["offset"] = layout["sizes"][rows[row]["shard"]] + data.draw(st.integers(0, 3), label="past")
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / INDEX)
        with pytest.raises(StoreError, match=rf"index row {row} points at offset \d+, past the end of shard-"):
            ActivationStore(folder)
