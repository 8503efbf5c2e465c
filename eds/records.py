"""Atomic writes and resumable sharded record tables (parquet).

Every artifact is written to a temporary file in the same folder and renamed into place, so a
kill leaves either the old file or the new one, never a torn one (only a hidden
``.<name>.<random>.tmp`` beside it, which the sharded writers and :func:`atomic_dir` remove on
their next run, so that no stray file ends up inside an output folder).
:class:`ShardedTable` is the resume unit of the long stages: a folder of ``shard-NNNNN.parquet``
files plus a manifest with the fingerprint of the inputs; a rerun keeps complete shards whose
fingerprint matches, so a killed-then-resumed run ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: mkstemp/mkdtemp make owner-only 0600/0700
DIR_MODE = 0o777 & ~_UMASK


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return Path(tmp)


def is_temp_name(name: str) -> bool:
    """A name the atomic writers below give their temporary files and folders (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete temporary files and folders a killed writer left in ``folder``; returns what was removed.

    Call it only where no other writer can be active in ``folder`` (a stage's single process, or
    after every shard is written), since another process's in-flight temporary file looks the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    stale = sorted((p for p in found if is_temp_name(p.name)), key=lambda p: len(p.parts), reverse=True)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds (removed if not).

    For writers that want a file name rather than bytes (h5py, matplotlib, pyarrow)::

        with atomic_output("out.h5") as tmp, h5py.File(tmp, "w") as handle:
            ...
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` as a whole when the block succeeds.

    Readers see the old folder or the new one, never a mix (apart from the instant between the
    two renames, when ``path`` is briefly absent); a failure leaves the old folder untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):  # left by a writer killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(DIR_MODE)
    old = path.parent / f".{path.name}.old"
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: str | Path, rows: Sequence[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    path = Path(path)
    table = pa.Table.from_pylist(list(rows), schema=schema)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_parquet_rows(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def fingerprint(obj: Any) -> str:
    """A stable sha256 of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardedTable:
    """A folder of parquet shards of known sizes, tied to the fingerprint of what produced them."""

    def __init__(self, folder: str | Path, key: str, shard_sizes: Sequence[int]) -> None:
        self.folder = Path(folder)
        self.key = key
        self.shard_sizes = list(shard_sizes)

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.parquet"

    def open(self) -> "ShardedTable":
        """Start or resume: keep the folder if its manifest matches, otherwise start afresh."""
        manifest = self.read_manifest()
        expected = {"key": self.key, "shard_sizes": self.shard_sizes}
        if manifest is None or {k: manifest.get(k) for k in expected} != expected:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            atomic_write_json(self.folder / MANIFEST, {**expected, "complete": False})
        return self

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, index: int) -> bool:
        """A shard counts only if it is readable and has exactly the expected row count."""
        path = self.shard_path(index)
        try:
            return path.is_file() and pq.ParquetFile(path).metadata.num_rows == self.shard_sizes[index]
        except (OSError, pa.ArrowException):
            return False

    def pending(self) -> list[int]:
        return [i for i in range(len(self.shard_sizes)) if not self.is_done(i)]

    def write(self, index: int, rows: Sequence[dict[str, Any]]) -> None:
        if len(rows) != self.shard_sizes[index]:
            raise ValueError(f"shard {index}: {len(rows)} rows, expected {self.shard_sizes[index]}")
        atomic_write_parquet(self.shard_path(index), rows)

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.folder}: shards not written: {missing}")
        remove_stale_temps(self.folder)  # a torn temporary shard of a killed run is not part of the output
        manifest = {"key": self.key, "shard_sizes": self.shard_sizes, "complete": True, **(extra or {})}
        manifest["sha256"] = {self.shard_path(i).name: file_sha256(self.shard_path(i)) for i in range(len(self.shard_sizes))}
        atomic_write_json(self.folder / MANIFEST, manifest)

    def rows(self) -> list[dict[str, Any]]:
        return [row for i in range(len(self.shard_sizes)) for row in read_parquet_rows(self.shard_path(i))]


def read_table_rows(folder: str | Path) -> list[dict[str, Any]]:
    """All rows of a finished :class:`ShardedTable`, in shard order; errors if it is incomplete."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FileNotFoundError(f"{folder}: no readable {MANIFEST}; run the producing stage first") from None
    if not manifest.get("complete"):
        raise RuntimeError(f"{folder}: incomplete (the producing stage was interrupted); rerun it")
    table = ShardedTable(folder, manifest["key"], manifest["shard_sizes"])
    return table.rows()


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
