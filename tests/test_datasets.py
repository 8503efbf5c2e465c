"""eds.datasets: every local benchmark copy loads with the declared shape; demo suite; sampling; errors."""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from pathlib import Path

import pytest

from eds.datasets import REGISTRY, ChoiceItem, DatasetUnavailable, Item, MathItem, PromptItem, load

BENCHMARKS = Path("/work/shared/benchmarks")
KIND_TYPES = {"prompts": PromptItem, "multiple_choice": ChoiceItem, "math": MathItem}
LOCAL_SPLITS = [
    (name, split_name)
    for name, spec in REGISTRY.items()
    if not spec.packaged
    for split_name, split in spec.splits.items()
    if split.local_file
]
DEMO = ["demo_train", "demo_eval", "demo_mc", "demo_math"]


@functools.lru_cache(maxsize=None)
def _local(name: str, split: str) -> tuple[Item, ...]:
    return tuple(load(name, split=split, root=BENCHMARKS))


def local(name: str, split: str | None = None) -> tuple[Item, ...]:
    return _local(name, split or REGISTRY[name].default_split)


def check_items(name: str, items: tuple[Item, ...]) -> None:
    spec = REGISTRY[name]
    assert items and all(isinstance(item, KIND_TYPES[spec.kind]) for item in items)
    ids = [item.item_id for item in items]
    assert len(set(ids)) == len(ids)
    assert all(item.dataset == name and item.item_id.startswith(f"{name}:") for item in items)
    for item in items:
        if isinstance(item, PromptItem):
            assert item.prompt.strip() and item.prompt_type in {"benign", "harmful"}
        elif isinstance(item, ChoiceItem):
            assert item.question.strip() and len(item.choices) >= 2
            assert 0 <= item.answer < len(item.choices)
        else:
            assert item.question.strip() and str(item.answer).strip()


# ------------------------------------------------------------------------------ the local copies


def test_every_local_split_is_covered() -> None:
    assert len(LOCAL_SPLITS) == 15
    assert {"cares", "math"}.isdisjoint(name for name, _ in LOCAL_SPLITS)


@pytest.mark.parametrize(("name", "split"), LOCAL_SPLITS)
def test_local_split_loads_with_declared_rows(name: str, split: str) -> None:
    items = local(name, split)
    assert len(items) == REGISTRY[name].splits[split].rows
    check_items(name, items)


@pytest.mark.parametrize(("name", "prompt_type"), [(n, s.prompt_type) for n, s in REGISTRY.items() if s.prompt_type])
def test_fixed_prompt_type(name: str, prompt_type: str) -> None:
    assert {item.prompt_type for item in local(name)} == {prompt_type}


def test_xstest_labels() -> None:
    counts = Counter(item.prompt_type for item in local("xstest"))
    assert counts == {"benign": 250, "harmful": 200}
    assert all(item.category for item in local("xstest"))


def test_harmbench_keeps_only_standard_behaviors() -> None:
    with open(BENCHMARKS / "harmbench/harmbench_behaviors_text_test.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    standard = [row["Behavior"] for row in rows if row["FunctionalCategory"] == "standard"]
    assert len(rows) == 320 and len(standard) == 159
    assert [item.prompt for item in local("harmbench")] == standard


def test_mmlu_has_four_choices() -> None:
    items = local("mmlu")
    assert all(len(item.choices) == 4 for item in items)
    assert set(Counter(item.answer for item in items)) == {0, 1, 2, 3}
    assert len({item.subject for item in items}) == 57


def test_arc_answer_key_maps_to_the_right_index() -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(BENCHMARKS / "arc-challenge/test.parquet").to_pylist()
    items = local("arc_challenge")
    assert len(rows) == len(items)
    digit_rows = [i for i, row in enumerate(rows) if row["answerKey"].isdigit()]
    letter_rows = [i for i, row in enumerate(rows) if row["answerKey"].isalpha()]
    assert digit_rows and letter_rows
    for i in digit_rows + letter_rows[:200]:
        row, item = rows[i], items[i]
        key = row["answerKey"]
        expected = int(key) - 1 if key.isdigit() else ord(key) - ord("A")
        assert row["choices"]["label"][expected] == key
        assert item.question == row["question"]
        assert item.choices == tuple(row["choices"]["text"])
        assert item.answer == expected
        assert item.choices[item.answer] == row["choices"]["text"][expected]


def test_gsm8k_answer_is_the_number_after_the_marker() -> None:
    for split in ("test", "train"):
        lines = (BENCHMARKS / f"gsm8k/{split}.jsonl").read_text(encoding="utf-8").splitlines()
        raw = [json.loads(line) for line in lines if line.strip()]
        items = local("gsm8k", split)
        assert len(raw) == len(items)
        for row, item in zip(raw, items):
            assert item.question == row["question"]
            assert item.answer == row["answer"].split("####")[1].strip().replace(",", "")
            float(item.answer)


def test_math500_answers_are_kept_verbatim() -> None:
    lines = (BENCHMARKS / "math-500/test.jsonl").read_text(encoding="utf-8").splitlines()
    raw = [json.loads(line) for line in lines if line.strip()]
    assert [item.answer for item in local("math500")] == [row["answer"] for row in raw]


# ------------------------------------------------------------------------------ demo suite


@pytest.mark.parametrize("name", DEMO)
def test_demo_suite_loads_without_a_root(name: str) -> None:
    assert not REGISTRY[name].needs_root
    check_items(name, tuple(load(name)))


def test_demo_prompts_have_both_types() -> None:
    for name in ("demo_train", "demo_eval"):
        assert {item.prompt_type for item in load(name)} == {"benign", "harmful"}


def test_demo_train_and_eval_share_no_prompt() -> None:
    train = {" ".join(item.prompt.lower().split()) for item in load("demo_train")}
    evaluation = {" ".join(item.prompt.lower().split()) for item in load("demo_eval")}
    assert train and evaluation and not train & evaluation


# ------------------------------------------------------------------------------ sampling


def test_seeded_sampling() -> None:
    full = [item.item_id for item in load("demo_train")]
    first = [item.item_id for item in load("demo_train", limit=20, seed=1)]
    assert len(first) == 20
    assert first == [item.item_id for item in load("demo_train", limit=20, seed=1)]
    assert first != [item.item_id for item in load("demo_train", limit=20, seed=2)]
    assert first == sorted(first, key=full.index)  # file order
    assert set(first) <= set(full)


def test_sampling_is_per_dataset_and_from_local_copies() -> None:
    sampled = load("advbench", root=BENCHMARKS, limit=10, seed=0)
    assert len(sampled) == 10 and len({item.item_id for item in sampled}) == 10
    assert [item.item_id for item in sampled] == sorted(item.item_id for item in sampled)


@pytest.mark.parametrize("extra", [0, 1, 1000])
def test_limit_at_or_above_size_returns_all(extra: int) -> None:
    full = load("demo_mc")
    assert load("demo_mc", limit=len(full) + extra, seed=3) == full


# ------------------------------------------------------------------------------ unavailable data


@pytest.mark.parametrize("name", ["cares", "math"])
def test_hub_only_datasets_fail_locally(name: str) -> None:
    with pytest.raises(DatasetUnavailable, match="hub"):
        load(name, root=BENCHMARKS)


@pytest.mark.timeout(120)
def test_hub_source_offline_fails_fast() -> None:
    with pytest.raises(DatasetUnavailable, match="walledai/AdvBench"):
        load("advbench", source="hub")


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(DatasetUnavailable, match="unknown dataset 'nope'"):
        load("nope")
    with pytest.raises(DatasetUnavailable, match="no split 'dev'"):
        load("advbench", split="dev", root=BENCHMARKS)


def test_real_benchmark_needs_a_root() -> None:
    with pytest.raises(DatasetUnavailable, match="root"):
        load("advbench")


def test_missing_file_in_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="not found"):
        load("advbench", root=tmp_path)


def test_csv_without_the_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "advbench/harmful_behaviors.csv"
    path.parent.mkdir()
    path.write_text("behavior,target\nDo a thing,Sure\n", encoding="utf-8")
    with pytest.raises(DatasetUnavailable, match="'goal'") as info:
        load("advbench", root=tmp_path)
    assert "behavior" in str(info.value)


def test_csv_with_the_right_column_loads(tmp_path: Path) -> None:
    path = tmp_path / "advbench/harmful_behaviors.csv"
    path.parent.mkdir()
    path.write_text('goal,target\nDo a thing,Sure\n"Another, with comma",Sure\n', encoding="utf-8")
    items = load("advbench", root=tmp_path)
    assert [item.prompt for item in items] == ["Do a thing", "Another, with comma"]


@pytest.mark.parametrize(
    ("relpath", "name", "content"),
    [
        ("advbench/harmful_behaviors.csv", "advbench", b""),
        ("advbench/harmful_behaviors.csv", "advbench", b"goal,target\n"),
        ("or-bench-toxic-harmful/or-bench-toxic-harmful.jsonl", "orb_toxic", b""),
        ("or-bench-toxic-harmful/or-bench-toxic-harmful.jsonl", "orb_toxic", b"\n\n"),
        ("mmlu/test.parquet", "mmlu", b""),
    ],
)
def test_empty_file_raises(tmp_path: Path, relpath: str, name: str, content: bytes) -> None:
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DatasetUnavailable):
        load(name, root=tmp_path)


def test_rows_filtered_to_nothing_raise(tmp_path: Path) -> None:
    path = tmp_path / "alpaca/train.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"instruction": "Summarise this.", "input": "some text"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetUnavailable, match="no usable rows"):
        load("alpaca", root=tmp_path)
