"""eds.records: atomic writes and the resumable ShardedTable."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from eds.records import (
    MANIFEST,
    ShardedTable,
    atomic_write_bytes,
    atomic_write_json,
    atomic_dir,
    atomic_output,
    atomic_write_parquet,
    chunks,
    fingerprint,
    read_table_rows,
)

SIZES = [3, 3, 2]


def rows_for(index: int) -> list[dict[str, object]]:
    return [{"item_id": f"x:{index}:{j}", "shard": index, "score": j / 2} for j in range(SIZES[index])]


def all_rows() -> list[dict[str, object]]:
    return [row for i in range(len(SIZES)) for row in rows_for(i)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blob.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert leftovers(path.parent) == []
    assert [p.name for p in path.parent.iterdir()] == ["blob.bin"]


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2], "text": "é"})
    atomic_write_json(path, {"z": 0.5})
    assert json.loads(path.read_text(encoding="utf-8")) == {"z": 0.5}
    assert leftovers(tmp_path) == []


def test_atomic_write_json_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"bad": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": 1}
    assert leftovers(tmp_path) == []


def test_atomic_write_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    atomic_write_parquet(path, [{"a": 1}, {"a": 2}])
    assert pq.read_table(path).to_pylist() == [{"a": 1}, {"a": 2}]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ ShardedTable


def test_full_cycle(tmp_path: Path) -> None:
    folder = tmp_path / "table"
    table = ShardedTable(folder, "key-1", SIZES).open()
    assert folder.is_dir() and table.pending() == [0, 1, 2]
    assert json.loads((folder / MANIFEST).read_text())["complete"] is False
    table.write(1, rows_for(1))
    assert table.pending() == [0, 2]
    table.write(0, rows_for(0))
    assert table.pending() == [2]
    with pytest.raises(RuntimeError, match=r"\[2\]"):
        table.finish()
    table.write(2, rows_for(2))
    assert table.pending() == []
    table.finish(extra={"model": "m"})
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["model"] == "m" and manifest["key"] == "key-1"
    assert manifest["shard_sizes"] == SIZES
    names = [f"shard-{i:05d}.parquet" for i in range(3)]
    assert manifest["sha256"] == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    assert read_table_rows(folder) == all_rows()
    assert table.rows() == all_rows()
    assert leftovers(folder) == []


def test_open_on_existing_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "table"
    folder.mkdir()
    table = ShardedTable(folder, "k", SIZES).open()
    assert table.pending() == [0, 1, 2] and (folder / MANIFEST).is_file()


def test_reopen_same_key_keeps_shards(tmp_path: Path) -> None:
    folder = tmp_path / "table"
    first = ShardedTable(folder, "k", SIZES).open()
    first.write(0, rows_for(0))
    first.write(2, rows_for(2))
    again = ShardedTable(folder, "k", SIZES).open()
    assert again.pending() == [1]
    again.write(1, rows_for(1))
    again.finish()
    assert read_table_rows(folder) == all_rows()
    # a finished table reopened with the same key stays finished and readable
    assert ShardedTable(folder, "k", SIZES).open().pending() == []
    assert read_table_rows(folder) == all_rows()


@pytest.mark.parametrize(("key", "sizes"), [("other-key", SIZES), ("k", [3, 3, 1]), ("k", [3, 3, 2, 1])])
def test_reopen_with_other_key_or_sizes_wipes(tmp_path: Path, key: str, sizes: list[int]) -> None:
    folder = tmp_path / "table"
    table = ShardedTable(folder, "k", SIZES).open()
    for i in range(3):
        table.write(i, rows_for(i))
    table.finish()
    (folder / "stray.txt").write_text("left from an old run")
    fresh = ShardedTable(folder, key, sizes).open()
    assert fresh.pending() == list(range(len(sizes)))
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST]
    with pytest.raises(RuntimeError, match="incomplete"):
        read_table_rows(folder)


def test_unreadable_manifest_starts_afresh(tmp_path: Path) -> None:
    folder = tmp_path / "table"
    table = ShardedTable(folder, "k", SIZES).open()
    table.write(0, rows_for(0))
    (folder / MANIFEST).write_text("{not json")
    assert ShardedTable(folder, "k", SIZES).open().pending() == [0, 1, 2]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_shard_is_not_done(tmp_path: Path, damage: str) -> None:
    table = ShardedTable(tmp_path / "t", "k", SIZES).open()
    table.write(0, rows_for(0))
    table.write(1, rows_for(1))
    path = table.shard_path(1)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00garbage" * 50, "truncate": data[: len(data) // 2], "empty": b""}[damage])
    assert table.pending() == [1, 2]
    assert table.is_done(0) and not table.is_done(1)
    table.write(1, rows_for(1))  # rewriting repairs it
    assert table.pending() == [2]


def test_shard_with_wrong_row_count_is_not_done(tmp_path: Path) -> None:
    table = ShardedTable(tmp_path / "t", "k", SIZES).open()
    atomic_write_parquet(table.shard_path(0), rows_for(0)[:2])
    atomic_write_parquet(table.shard_path(2), rows_for(0))  # 3 rows where 2 belong
    assert table.pending() == [0, 1, 2]


def test_write_with_wrong_row_count_raises(tmp_path: Path) -> None:
    table = ShardedTable(tmp_path / "t", "k", SIZES).open()
    with pytest.raises(ValueError, match="shard 0: 2 rows, expected 3"):
        table.write(0, rows_for(0)[:2])
    with pytest.raises(ValueError):
        table.write(2, rows_for(0))
    assert not table.shard_path(0).exists() and table.pending() == [0, 1, 2]


def test_read_table_rows_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_table_rows(tmp_path / "absent")
    table = ShardedTable(tmp_path / "t", "k", SIZES).open()
    for i in range(3):
        table.write(i, rows_for(i))
    with pytest.raises(RuntimeError, match="incomplete"):
        read_table_rows(tmp_path / "t")  # all shards there, but finish() never ran


# ------------------------------------------------------------------------------ helpers


def test_fingerprint() -> None:
    a = fingerprint({"model": "m", "prompts": ["p1", "p2"], "cfg": {"x": 1, "y": 2}})
    b = fingerprint({"cfg": {"y": 2, "x": 1}, "prompts": ["p1", "p2"], "model": "m"})
    assert a == b and len(a) == 64 and int(a, 16) >= 0
    assert fingerprint({"model": "m", "prompts": ["p2", "p1"], "cfg": {"x": 1, "y": 2}}) != a
    assert fingerprint({"model": "m", "prompts": ["p1", "p2"], "cfg": {"x": 1, "y": 3}}) != a
    assert fingerprint([1]) != fingerprint(["1"])


def test_chunks() -> None:
    assert [list(c) for c in chunks(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    """Artifacts get the modes open()/mkdir() would give under the umask (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    with atomic_output(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    with atomic_dir(tmp_path / "folder") as folder:
        (folder / "c.txt").write_text("z")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask
