"""eds.splits and the split stage: stratification, disjointness, exclusions, hashes, config."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from eds.config import DATA_ROOT_ENV, ConfigError, parse
from eds.datasets import PromptItem, text_key
from eds.splits import (
    PoolSource,
    SplitError,
    SplitLeakError,
    build_splits,
    check_disjoint,
    keys_of,
    load_exclusions,
    manifest,
    read_splits,
    split_hash,
    stratified_pick,
    write_exclusions,
)

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path("/work/shared/benchmarks")


def items(dataset: str, n: int, prompt_type: str = "benign", categories: int = 3) -> list[PromptItem]:
    return [
        PromptItem(f"{dataset}:{i:05d}", dataset, f"{dataset} prompt number {i}", prompt_type, f"c{i % categories}")
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ stratified sampling


def test_stratified_pick_is_proportional_per_stratum_and_seeded() -> None:
    strata = [i % 7 for i in range(300)]
    picked = stratified_pick(300, lambda i: strata[i], 0.3, seed=0, salt="x")
    assert abs(sum(picked) - 90) <= 1
    for stratum in range(7):
        members = [p for p, s in zip(picked, strata) if s == stratum]
        assert abs(sum(members) - 0.3 * len(members)) <= 1
    assert picked == stratified_pick(300, lambda i: strata[i], 0.3, seed=0, salt="x")
    assert picked != stratified_pick(300, lambda i: strata[i], 0.3, seed=1, salt="x")


def test_stratified_pick_with_singleton_strata_still_hits_the_total() -> None:
    picked = stratified_pick(40, lambda i: i, 0.25, seed=3, salt="s")  # every stratum has one item
    assert sum(picked) == 10  # 0.25 * 40 exactly, although no stratum can hold a quarter
    assert stratified_pick(5, lambda i: 0, 1.0, 0, "a") == [True] * 5
    assert stratified_pick(5, lambda i: 0, 0.0, 0, "a") == [False] * 5


# ------------------------------------------------------------------------------ the protocol


def test_build_splits_protocol() -> None:
    alpaca = items("alpaca", 60)
    orb = items("orb_h", 80, categories=4)
    toxic = items("orb_toxic", 40, prompt_type="harmful")
    pool = [PoolSource(alpaca), PoolSource(orb, 0.5), PoolSource(toxic)]
    rows, report = build_splits(pool, {}, val_fraction=0.2, seed=0)
    by_split = Counter(row.split for row in rows)
    assert by_split["eval"] == 40 and all(row.dataset == "orb_h" for row in rows if row.split == "eval")
    # The eval half is stratified by category.
    for category in ("c0", "c1", "c2", "c3"):
        in_eval = sum(row.split == "eval" for row in rows if row.dataset == "orb_h" and row.category == category)
        assert abs(in_eval - 10) <= 1
    # Validation: ~20% of the training pool per dataset x prompt type.
    for dataset, n in (("alpaca", 60), ("orb_h", 40), ("orb_toxic", 40)):
        val = sum(row.split == "val" for row in rows if row.dataset == dataset)
        assert abs(val - 0.2 * n) <= 1
    assert [row.item_id for row in rows] == [i.item_id for i in alpaca + orb + toxic]  # order kept
    check_disjoint(keys_of(rows), [row for row in rows if row.split == "eval"])
    assert report.excluded == {"alpaca": 0, "orb_h": 0, "orb_toxic": 0}
    again, _ = build_splits(pool, {}, val_fraction=0.2, seed=0)
    assert again == rows
    other, _ = build_splits(pool, {}, val_fraction=0.2, seed=1)
    assert [r.split for r in other] != [r.split for r in rows]


def test_exclusions_and_repeats_are_dropped_and_reported(tmp_path: Path) -> None:
    alpaca = items("alpaca", 20)
    advbench = items("advbench", 20, prompt_type="harmful")
    repeat = PromptItem("advbench:99999", "advbench", "ALPACA prompt number 3!", "harmful")  # same normalised text
    exclusion = tmp_path / "training_prompts.json"
    write_exclusions(exclusion, [alpaca[0], alpaca[1], advbench[5]])
    excluded = load_exclusions([exclusion])
    assert excluded["alpaca"] == {text_key(alpaca[0].prompt), text_key(alpaca[1].prompt)}
    rows, report = build_splits([PoolSource(alpaca), PoolSource([*advbench, repeat])], excluded, 0.25, seed=0)
    assert report.excluded == {"alpaca": 2, "advbench": 1}
    assert report.duplicate == {"alpaca": 0, "advbench": 1}
    ids = {row.item_id for row in rows}
    assert not ids & {alpaca[0].item_id, alpaca[1].item_id, advbench[5].item_id, repeat.item_id}
    assert len(rows) == 40 - 3
    info = manifest(rows, report)
    assert info["dropped"]["excluded"]["alpaca"] == 2
    assert info["n"]["train"] + info["n"]["val"] == 37


def test_limit_is_drawn_after_exclusions(tmp_path: Path) -> None:
    from eds.datasets import sample

    advbench = items("advbench", 50, prompt_type="harmful")
    trained_on = advbench[:30]
    write_exclusions(tmp_path / "x.json", trained_on)
    rows, report = build_splits([PoolSource(advbench, limit=20)], load_exclusions([tmp_path / "x.json"]), 0.25, 0)
    assert len(rows) == 20 and report.excluded == {"advbench": 30}
    assert not {row.item_id for row in rows} & {item.item_id for item in trained_on}
    plain, _ = build_splits([PoolSource(advbench, limit=20)], {}, 0.25, 0)  # no exclusions: as datasets.load
    assert [row.item_id for row in plain] == [item.item_id for item in sample(advbench, 20, 0, "advbench")]


def test_exclusion_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(SplitError, match="absent.json"):
        load_exclusions([missing])
    bad = tmp_path / "bad.json"
    for content in ("not json", json.dumps({"keys": {}}), json.dumps({"text_keys": {"a": ["xyz"]}}),
                    json.dumps({"text_keys": {"a": "0" * 64}})):
        bad.write_text(content)
        with pytest.raises(SplitError, match="bad.json"):
            load_exclusions([bad])


def test_check_disjoint_matches_normalised_text() -> None:
    train = {text_key("How do I kill a Python process?")}
    eval_items = [PromptItem("x:1", "x", "how do i KILL a python process", "benign"), {"item_id": "x:2", "prompt": "fine"}]
    with pytest.raises(SplitLeakError, match="x:1"):
        check_disjoint(train, eval_items)
    check_disjoint(train, [{"item_id": "x:3", "text_key": text_key("something else")}])


def test_split_hash_is_order_independent_and_content_sensitive() -> None:
    keys = [text_key(f"p{i}") for i in range(5)]
    assert split_hash(keys) == split_hash(list(reversed(keys)))
    assert split_hash(keys) != split_hash(keys[:-1])


def test_too_small_pool_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match="val split is empty"):
        build_splits([PoolSource(items("a", 1))], {}, 0.2, seed=0)


def test_same_dataset_twice_with_different_fractions_is_an_error() -> None:
    group = items("harmbench", 4, prompt_type="harmful")
    with pytest.raises(SplitError, match="train fractions"):
        build_splits([PoolSource(group[:2], 0.5), PoolSource(group[2:])], {}, 0.2, seed=0)


# ------------------------------------------------------------------------------ the stage


def test_split_stage_writes_artifact_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import split
    from pipelines.paths import SPLITS, SPLITS_MANIFEST

    monkeypatch.chdir(tmp_path)
    demo = [PromptItem(f"demo_train:{i:05d}", "demo_train", p, t) for i, (p, t) in enumerate(_demo_prompts())]
    write_exclusions("exclude.json", demo[:3])
    params = parse(
        {"data": {"train": [{"name": "demo_train"}]}, "splits": {"exclude": ["exclude.json"]}, "tracking": {"enabled": False}}
    )
    summary = split.run(params)
    rows = read_splits(SPLITS)
    info = json.loads(SPLITS_MANIFEST.read_text())
    assert summary["dropped"]["excluded"] == {"demo_train": 3}
    assert len(rows) == 177 and info["n"] == {"train": len(rows) - info["n"]["val"], "val": info["n"]["val"], "eval": 0}
    assert info["sha256"]["val"] == split_hash(r.text_key for r in rows if r.split == "val")
    assert list(info["exclude"]) == ["exclude.json"] and len(info["exclude"]["exclude.json"]) == 64
    assert set(info["counts"]["val"]["demo_train"]) == {"benign", "harmful"}


def _demo_prompts() -> list[tuple[str, str]]:
    lines = (REPO / "eds" / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [(row["prompt"], row["prompt_type"]) for row in map(json.loads, lines)]


# ------------------------------------------------------------------------------ config


def repo_raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"data": {"train": [{"name": "orb_h", "train_fraction": 0}]}}, "data.train.0.train_fraction"),
        ({"data": {"train": [{"name": "orb_h", "train_fraction": 1.5}]}}, "data.train.0.train_fraction"),
        ({"splits": {"val_fraction": 0}}, "splits.val_fraction"),
        ({"splits": {"val_fraction": 1}}, "splits.val_fraction"),
        ({"splits": {"exclude": "x.json"}}, "splits.exclude"),
    ],
)
def test_split_params_are_validated(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        parse(raw, check_paths=False)


def test_missing_exclusion_file_fails_the_path_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"splits\.exclude\.0: exclusion file not found: nope\.json"):
        parse({"splits": {"exclude": ["nope.json"]}})
    (tmp_path / "yes.json").write_text('{"text_keys": {}}')
    assert parse({"splits": {"exclude": ["yes.json"]}}).splits.exclude == ("yes.json",)


def test_benchmarks_profile_protocol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(DATA_ROOT_ENV, str(BENCHMARKS))
    params = parse({**repo_raw(), "profile": "benchmarks"}, check_paths=False)
    refs = {ref.name: ref for ref in params.data.train}
    assert set(refs) == {"alpaca", "orb_h", "orb_toxic", "advbench"}
    assert refs["orb_h"].train_fraction == 0.5 and refs["alpaca"].train_fraction is None
    assert params.splits.exclude == ("models/testbed/training_prompts.json",)
    assert not {"xstest", "jbb_harmful", "jbb_benign", "harmbench"} & set(refs)  # never trained on
    demo = parse(repo_raw(), check_paths=False)
    assert demo.splits.exclude == () and [r.name for r in demo.data.train] == ["demo_train"]
