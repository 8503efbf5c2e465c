"""Sharded HDF5 storage of per-layer activations, with a parquet index, checksums and resume.

Layout of a store folder (``data/activations/``)::

    shard-00000.h5     h        [n_layers, rows, hidden]  (float16 or float32)
                       item_id  [rows]                    (the index rows it holds, in order)
    ...
    index.parquet      row, shard, offset, item_id, dataset, prompt_type, category, label, ...
    manifest.json      key, shard sizes, sha256 per shard and of the index, shape, dtype, model

**Why layer-major with one layer per chunk.** Training reads either one layer at a time
(selection, scoring, a single-layer EBM) or every layer of the same rows (the batched trainer).
With ``h`` stored as ``[layer, row, hidden]`` and chunked ``(1, rows, hidden)`` (rows capped so
a chunk stays near 8 MiB), reading layer ``l`` of a shard is one contiguous chunk read, and
reading all layers is reading the whole file front to back; a row-major layout would make the
per-layer read a strided gather over every chunk. Activations barely compress (see
``shared/notes/toolchain.md``), so the default is no compression; ``lzf`` is the option.

**Resume.** Each shard is written to a temporary file and renamed into place, then its sha256 is
recorded in the manifest. A rerun with the same key (inputs, model, dtype, shard plan) keeps
every shard whose checksum matches (or, if the kill fell between rename and manifest update,
that opens with the expected rows) and writes only the others: no duplicate, no torn file.

**Integrity.** A reader trusts nothing it has not checked against the manifest: opening a store
checks the index's sha256 and that every index row points inside an existing shard; the first
read of a shard checks its sha256 (a truncated or bit-flipped shard is an error naming it); every
read rejects non-finite values, naming the layer and row. Nothing here unpickles: item ids are
HDF5 variable-length strings, the index is parquet, the manifest JSON.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eds.records import atomic_output, atomic_write_json, atomic_write_parquet, file_sha256, remove_stale_temps

MANIFEST = "manifest.json"
INDEX = "index.parquet"
STORE_VERSION = 1
CHUNK_BYTES = 8 << 20
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreError(RuntimeError):
    """An activation store is missing, incomplete, inconsistent or corrupt."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


class ActivationWriter:
    """Writes a planned set of shards; resumable across kills (see the module docstring)."""

    def __init__(
        self,
        folder: str | Path,
        key: str,
        shard_items: Sequence[Sequence[str]],
        n_layers: int,
        hidden_size: int,
        dtype: str = "float16",
        compression: str = "none",
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"storage dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if compression not in ("none", "lzf"):
            raise ValueError(f"compression must be none or lzf, got {compression!r}")
        self.folder = Path(folder)
        self.key = key
        self.shard_items = [list(items) for items in shard_items]
        self.n_layers = n_layers
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.compression = compression
        self._manifest: dict[str, Any] = {}

    @property
    def _identity(self) -> dict[str, Any]:
        return {
            "version": STORE_VERSION,
            "key": self.key,
            "shard_sizes": [len(items) for items in self.shard_items],
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype,
            "compression": self.compression,
        }

    def open(self) -> "ActivationWriter":
        """Resume when the folder holds the same plan; otherwise start afresh."""
        manifest = _read_json(self.folder / MANIFEST)
        identity = self._identity
        if manifest is None or {k: manifest.get(k) for k in identity} != identity:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            manifest = {**identity, "complete": False, "shards": {}}
            atomic_write_json(self.folder / MANIFEST, manifest)
        self._manifest = manifest
        return self

    def shard_path(self, index: int) -> Path:
        return self.folder / shard_name(index)

    def is_done(self, index: int) -> bool:
        path = self.shard_path(index)
        if not path.is_file():
            return False
        recorded = self._manifest.get("shards", {}).get(path.name)
        if recorded is not None:
            return file_sha256(path) == recorded
        if _shard_matches(path, self.shard_items[index], self.n_layers, self.hidden_size):
            self._record(index)  # killed after the rename, before the manifest update
            return True
        return False

    def pending(self) -> list[int]:
        return [i for i in range(len(self.shard_items)) if not self.is_done(i)]

    def write_shard(self, index: int, states: np.ndarray) -> str:
        """Write shard ``index`` from ``states [n_layers, rows, hidden]``; returns its sha256."""
        items = self.shard_items[index]
        expected = (self.n_layers, len(items), self.hidden_size)
        if tuple(states.shape) != expected:
            raise ValueError(f"shard {index}: states of shape {tuple(states.shape)}, expected {expected}")
        with np.errstate(over="ignore"):  # reported below, with a hint
            data = np.asarray(states).astype(DTYPES[self.dtype], copy=False)
        if not np.isfinite(data).all():
            hint = " (values overflow float16: set extract.dtype: float32)" if self.dtype == "float16" else ""
            raise StoreError(f"shard {index}: non-finite activations{hint}")
        rows_chunk = max(1, min(len(items), CHUNK_BYTES // (self.hidden_size * data.itemsize)))
        with atomic_output(self.shard_path(index)) as tmp, h5py.File(tmp, "w") as handle:
            handle.create_dataset(
                "h",
                data=data,
                chunks=(1, rows_chunk, self.hidden_size),
                compression=None if self.compression == "none" else self.compression,
                track_times=False,
            )
            handle.create_dataset("item_id", data=np.array(items, dtype=object), dtype=h5py.string_dtype(), track_times=False)
        return self._record(index)

    def _record(self, index: int) -> str:
        digest = file_sha256(self.shard_path(index))
        self._manifest.setdefault("shards", {})[shard_name(index)] = digest
        atomic_write_json(self.folder / MANIFEST, self._manifest)
        return digest

    def finish(self, index_rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the index (one row per stored row, in shard order) and mark the store complete."""
        missing = self.pending()
        if missing:
            raise StoreError(f"{self.folder}: shards not written: {missing}")
        remove_stale_temps(self.folder)  # a torn temporary shard of a killed run is not part of the store
        flat = [item for items in self.shard_items for item in items]
        if [row["item_id"] for row in index_rows] != flat:
            raise StoreError("index rows do not match the shard plan (order or ids differ)")
        rows = []
        for shard, items in enumerate(self.shard_items):
            for offset in range(len(items)):
                rows.append({"row": len(rows), "shard": shard, "offset": offset, **index_rows[len(rows)]})
        atomic_write_parquet(self.folder / INDEX, rows)
        manifest = {
            **self._identity,
            **(extra or {}),
            "complete": True,
            "n_rows": len(rows),
            "shards": {shard_name(i): file_sha256(self.shard_path(i)) for i in range(len(self.shard_items))},
            "index_sha256": file_sha256(self.folder / INDEX),
        }
        atomic_write_json(self.folder / MANIFEST, manifest)
        self._manifest = manifest
        return manifest


def _shard_matches(path: Path, items: Sequence[str], n_layers: int, hidden: int) -> bool:
    try:
        with h5py.File(path, "r") as handle:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in handle["item_id"][()]]
            return handle["h"].shape == (n_layers, len(items), hidden) and ids == list(items)
    except (OSError, KeyError, ValueError):
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ActivationStore:
    """Read access to a complete store: the index, and activations by layer and row.

    Opening checks the index against the manifest (its sha256, and that every row points at an
    existing shard and an offset inside it); the first read of each shard checks that shard's
    sha256, so a truncated or modified shard is an error naming it, never silent garbage; every
    read checks that the values are finite and names the row and layer of the first that is not.
    ``verify=True`` also checks every shard and the item ids up front (:meth:`verify`).
    """

    def __init__(self, folder: str | Path, verify: bool = False) -> None:
        self.folder = Path(folder)
        manifest = _read_json(self.folder / MANIFEST)
        if manifest is None:
            raise StoreError(f"{self.folder}: no readable {MANIFEST}; run the extract stage first")
        if not manifest.get("complete"):
            raise StoreError(f"{self.folder}: incomplete (extraction was interrupted); rerun the extract stage")
        self.manifest = manifest
        self.n_layers = int(manifest["n_layers"])
        self.hidden_size = int(manifest["hidden_size"])
        self.shard_sizes = [int(n) for n in manifest["shard_sizes"]]
        index_path = self.folder / INDEX
        try:
            self.index: list[dict[str, Any]] = pq.read_table(index_path).to_pylist()
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{index_path}: unreadable index ({err}); rerun the extract stage") from None
        check_index_layout(self.index, self.shard_sizes, index_path)
        if file_sha256(index_path) != manifest.get("index_sha256"):
            raise StoreError(
                f"{index_path}: sha256 checksum mismatch with {MANIFEST} (modified?); rerun the extract stage"
            )
        self._verified: set[int] = set()
        if verify:
            self.verify()

    def __len__(self) -> int:
        return len(self.index)

    def verify_shard(self, shard: int) -> None:
        """Check one shard's sha256 against the manifest (once per store object)."""
        if shard in self._verified:
            return
        path = self.folder / shard_name(shard)
        if not path.is_file():
            raise StoreError(f"{path}: shard missing; rerun the extract stage")
        if file_sha256(path) != self.manifest.get("shards", {}).get(path.name):
            raise StoreError(
                f"{path}: sha256 checksum mismatch with {MANIFEST} (truncated or corrupt shard); rerun the extract stage"
            )
        self._verified.add(shard)

    def verify(self) -> None:
        """Check every shard's and the index's sha256 against the manifest, and their shapes."""
        for i in range(len(self.shard_sizes)):
            self.verify_shard(i)
        if file_sha256(self.folder / INDEX) != self.manifest.get("index_sha256"):
            raise StoreError(f"{self.folder / INDEX}: checksum mismatch")
        check_index(self)

    def rows_where(self, **conditions: Any) -> list[int]:
        """Row numbers whose index fields equal the given values (a tuple/list/set means 'in')."""
        def ok(row: dict[str, Any]) -> bool:
            return all(
                row.get(k) in v if isinstance(v, (tuple, list, set, frozenset)) else row.get(k) == v
                for k, v in conditions.items()
            )

        return [row["row"] for row in self.index if ok(row)]

    def read(self, rows: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> np.ndarray:
        """``[len(layers), len(rows), hidden]`` in the requested row order (stored dtype)."""
        rows = list(range(len(self.index))) if rows is None else list(rows)
        layers = list(range(self.n_layers)) if layers is None else list(layers)
        if any(not 0 <= layer < self.n_layers for layer in layers):
            raise IndexError(f"layers must be in [0, {self.n_layers}), got {layers}")
        outside = [row for row in rows if not 0 <= row < len(self.index)]
        if outside:
            raise IndexError(f"rows must be in [0, {len(self.index)}), got {outside[:5]}")
        out: np.ndarray | None = None
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for position, row in enumerate(rows):
            entry = self.index[row]
            by_shard.setdefault(int(entry["shard"]), []).append((position, int(entry["offset"])))
        for shard, pairs in sorted(by_shard.items()):
            positions = np.array([p for p, _ in pairs])
            offsets = np.array([o for _, o in pairs])
            self.verify_shard(shard)
            with h5py.File(self.folder / shard_name(shard), "r") as handle:
                dataset = handle["h"]
                if out is None:
                    out = np.empty((len(layers), len(rows), self.hidden_size), dtype=dataset.dtype)
                for j, layer in enumerate(layers):
                    out[j, positions] = dataset[layer][offsets]  # one contiguous chunk read per layer
        if out is None:
            dtype = DTYPES[str(self.manifest.get("dtype", "float32"))]
            out = np.empty((len(layers), 0, self.hidden_size), dtype=dtype)
        self._check_finite(out, rows, layers)
        return out

    def _check_finite(self, out: np.ndarray, rows: Sequence[int], layers: Sequence[int]) -> None:
        finite = np.isfinite(out).all(axis=-1)  # [layers, rows]
        if finite.all():
            return
        j, p = (int(x[0]) for x in np.nonzero(~finite))
        entry = self.index[rows[p]]
        raise StoreError(
            f"{self.folder}: non-finite activation at layer {layers[j]}, row {rows[p]} (item {entry.get('item_id')}, "
            f"{shard_name(int(entry['shard']))} offset {entry['offset']}); {int((~finite).sum())} (layer, row) pairs "
            "affected; rerun the extract stage (extract.dtype: float32 if float16 overflows)"
        )

    def read_layer(self, layer: int, rows: Sequence[int] | None = None) -> np.ndarray:
        """``[len(rows), hidden]`` of one layer."""
        return self.read(rows, [layer])[0]


def check_index_layout(index: Sequence[dict[str, Any]], shard_sizes: Sequence[int], source: Path | str = INDEX) -> None:
    """Without reading any shard: rows numbered ``0..n-1``, each pointing at an existing shard and an
    offset inside it, every (shard, offset) used once, and as many rows as the shards hold."""
    seen: dict[tuple[int, int], int] = {}
    for position, entry in enumerate(index):
        try:
            row, shard, offset = int(entry["row"]), int(entry["shard"]), int(entry["offset"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{source}: index row {position} lacks a valid row/shard/offset ({err!r})") from None
        if row != position:
            raise StoreError(f"{source}: index row {position} is numbered {row}; rows must be 0..n-1 in order")
        if not 0 <= shard < len(shard_sizes):
            raise StoreError(
                f"{source}: index row {row} points at shard {shard}, but the store has {len(shard_sizes)} shards"
            )
        if not 0 <= offset < shard_sizes[shard]:
            raise StoreError(
                f"{source}: index row {row} points at offset {offset}, past the end of {shard_name(shard)} "
                f"({shard_sizes[shard]} rows)"
            )
        if (shard, offset) in seen:
            first = seen[(shard, offset)]
            raise StoreError(f"{source}: index rows {first} and {row} both point at {shard_name(shard)} offset {offset}")
        seen[(shard, offset)] = row
    if len(index) != sum(shard_sizes):
        raise StoreError(f"{source}: index has {len(index)} rows, the shards hold {sum(shard_sizes)}")


def check_index(store: ActivationStore) -> None:
    """The index is consistent with the shards: rows in order, offsets within sizes, ids match."""
    expected_rows = sum(store.shard_sizes)
    if len(store.index) != expected_rows:
        raise StoreError(f"index has {len(store.index)} rows, shards hold {expected_rows}")
    for shard, size in enumerate(store.shard_sizes):
        entries = [row for row in store.index if row["shard"] == shard]
        if [row["offset"] for row in entries] != list(range(size)):
            raise StoreError(f"{shard_name(shard)}: index offsets do not cover 0..{size - 1}")
        with h5py.File(store.folder / shard_name(shard), "r") as handle:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in handle["item_id"][()]]
            if handle["h"].shape != (store.n_layers, size, store.hidden_size):
                raise StoreError(f"{shard_name(shard)}: shape {handle['h'].shape} does not match the manifest")
        if ids != [row["item_id"] for row in entries]:
            raise StoreError(f"{shard_name(shard)}: item ids differ from the index")
    if [row["row"] for row in store.index] != list(range(expected_rows)):
        raise StoreError("index rows are not numbered 0..n-1 in shard order")


__all__ = [
    "ActivationStore",
    "ActivationWriter",
    "INDEX",
    "MANIFEST",
    "StoreError",
    "check_index",
    "check_index_layout",
    "shard_name",
]
