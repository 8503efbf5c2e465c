"""eds.activations (one-pass capture at the last prompt token) and eds.activation_store (HDF5)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from eds.activation_store import MANIFEST, ActivationStore, ActivationWriter, StoreError, check_index, shard_name
from eds.activations import decoder_layers, encode, extract_states, last_token_states, prepare_prompts
from eds.models import LoadedModel

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who learns to bake bread in a small village.",
    "What is 2 + 2?",
    "Explain photosynthesis in one sentence, please, for a ten year old child.",
]


# ------------------------------------------------------------------------------ capture


def test_padded_batch_matches_unpadded_reference_for_every_layer(tiny: LoadedModel) -> None:
    prepared = prepare_prompts(tiny, PROMPTS, 512)
    batch = encode(tiny, [p.chat for p in prepared])
    assert tiny.tokenizer.padding_side == "left" and bool((batch["attention_mask"][:, 0] == 0).any())
    states = last_token_states(tiny.model, batch["input_ids"], batch["attention_mask"])
    n_layers = len(decoder_layers(tiny.model))
    assert states.shape == (n_layers, len(PROMPTS), tiny.model.config.hidden_size)
    for i, p in enumerate(prepared):
        alone = encode(tiny, [p.chat])
        with torch.no_grad():
            reference = tiny.model(**alone, output_hidden_states=True).hidden_states
        for layer in range(n_layers):  # hidden_states[l] is the input of decoder layer l
            torch.testing.assert_close(states[layer, i], reference[layer][0, -1], rtol=1e-4, atol=1e-5)
        assert alone["input_ids"].shape[1] == p.n_tokens


def test_extract_states_keeps_input_order_whatever_the_batching(tiny: LoadedModel) -> None:
    prepared = prepare_prompts(tiny, PROMPTS, 512)
    one = extract_states(tiny, prepared, batch_size=1)
    three = extract_states(tiny, prepared, batch_size=3, out_dtype=torch.float16)
    assert three.dtype == torch.float16
    torch.testing.assert_close(three.float(), one, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(extract_states(tiny, prepared[::-1], batch_size=4), one.flip(1), rtol=1e-4, atol=1e-5)


def test_truncated_prompts_are_marked(tiny: LoadedModel) -> None:
    prepared = prepare_prompts(tiny, [PROMPTS[1]], max_prompt_tokens=8)
    assert prepared[0].truncated and prepared[0].n_tokens < len(tiny.tokenizer(tiny.chat(PROMPTS[1]))["input_ids"])


# ------------------------------------------------------------------------------ storage


def _plan(n_rows: int, shard: int) -> list[list[str]]:
    ids = [f"d:{i:05d}" for i in range(n_rows)]
    return [ids[s : s + shard] for s in range(0, n_rows, shard)]


def _write(folder: Path, data: np.ndarray, shard: int, dtype: str = "float32", key: str = "k") -> ActivationWriter:
    plan = _plan(data.shape[1], shard)
    writer = ActivationWriter(folder, key, plan, data.shape[0], data.shape[2], dtype).open()
    start = 0
    for i, ids in enumerate(plan):
        writer.write_shard(i, data[:, start : start + len(ids)])
        start += len(ids)
    writer.finish([{"item_id": item, "label": "good" if j % 3 else "bad", "split": "train"} for j, item in enumerate(sum(plan, []))])
    return writer


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hdf5_round_trip(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 10, 8)).astype(np.float32)
    _write(tmp_path / "store", data, shard=4, dtype=dtype)
    store = ActivationStore(tmp_path / "store", verify=True)
    expected = data.astype(dtype)
    assert store.n_layers == 3 and store.hidden_size == 8 and len(store) == 10
    np.testing.assert_array_equal(store.read(), expected)
    np.testing.assert_array_equal(store.read_layer(1), expected[1])
    rows = [9, 0, 5, 4]
    np.testing.assert_array_equal(store.read(rows, layers=[2, 0]), expected[[2, 0]][:, rows])
    assert store.rows_where(label="bad") == [0, 3, 6, 9]
    with h5py.File(tmp_path / "store" / shard_name(0)) as handle:  # layer-major, one layer per chunk
        assert handle["h"].shape == (3, 4, 8) and handle["h"].chunks == (1, 4, 8)


def test_index_is_consistent_with_shards(tmp_path: Path) -> None:
    data = np.arange(2 * 7 * 4, dtype=np.float32).reshape(2, 7, 4)
    _write(tmp_path / "s", data, shard=3)
    store = ActivationStore(tmp_path / "s")
    check_index(store)
    assert [(r["shard"], r["offset"]) for r in store.index] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    for row in store.index:  # each index row points at the activations of its item
        assert store.read([row["row"]])[0, 0, 0] == data[0, row["row"], 0]
    store.index[4]["item_id"] = "other"
    with pytest.raises(StoreError, match="item ids differ"):
        check_index(store)


def test_corrupt_shard_fails_verification(tmp_path: Path) -> None:
    _write(tmp_path / "s", np.zeros((2, 5, 4), dtype=np.float32), shard=2)
    path = tmp_path / "s" / shard_name(1)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match="checksum"):
        ActivationStore(tmp_path / "s", verify=True)


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    writer = ActivationWriter(tmp_path / "s", "k", _plan(4, 2), 1, 3).open()
    writer.write_shard(0, np.zeros((1, 2, 3), dtype=np.float32))
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(StoreError, match="not written"):
        writer.finish([{"item_id": i} for i in sum(_plan(4, 2), [])])


def test_writer_resumes_only_when_the_plan_matches(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    plan = _plan(6, 2)
    writer = ActivationWriter(folder, "k", plan, 2, 3).open()
    first = writer.write_shard(0, np.ones((2, 2, 3), dtype=np.float32))
    writer.write_shard(1, np.ones((2, 2, 3), dtype=np.float32))
    # Killed after the rename of shard 1 but before its checksum reached the manifest:
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["shards"][shard_name(1)]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    # A torn temporary file from the kill is ignored.
    (folder / f".{shard_name(2)}.x.tmp").write_bytes(b"torn")

    resumed = ActivationWriter(folder, "k", plan, 2, 3).open()
    assert resumed.pending() == [2]
    assert json.loads((folder / MANIFEST).read_text())["shards"][shard_name(0)] == first
    # A shard whose bytes no longer match its recorded checksum is redone.
    (folder / shard_name(0)).write_bytes(b"garbage")
    assert ActivationWriter(folder, "k", plan, 2, 3).open().pending() == [0, 2]
    # Another key (inputs changed) starts afresh.
    fresh = ActivationWriter(folder, "other", plan, 2, 3).open()
    assert fresh.pending() == [0, 1, 2] and not (folder / shard_name(1)).exists()


def test_float16_overflow_is_a_clear_error(tmp_path: Path) -> None:
    writer = ActivationWriter(tmp_path / "s", "k", _plan(2, 2), 1, 2, "float16").open()
    with pytest.raises(StoreError, match="float32"):
        writer.write_shard(0, np.full((1, 2, 2), 1e6, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        writer.write_shard(0, np.zeros((1, 3, 2), dtype=np.float32))
