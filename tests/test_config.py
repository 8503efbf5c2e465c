"""eds.config: the repo's params.yaml, error messages that name the key, paths, profiles."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eds.config import DATA_ROOT_ENV, ConfigError, Params, deep_merge, load, parse

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path("/work/shared/benchmarks")


def repo_raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def error_of(raw: dict[str, Any], check_paths: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw, check_paths=check_paths)
    return str(info.value)


# ------------------------------------------------------------------------------ the repo's params.yaml


def test_repo_params_yaml_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    params = load("params.yaml")
    assert params.profile == "demo"
    assert params.model.id.startswith("embedded:")
    assert [ref.name for ref in params.data.train] == ["demo_train"]
    assert params.generate.batch_size == 8
    assert params.experiment_name == "eds-demo"


def test_repo_benchmarks_profile_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(DATA_ROOT_ENV, str(BENCHMARKS))
    # check_paths=False: the profile's exclusion file is written by the testbed stage.
    params = parse({**repo_raw(), "profile": "benchmarks"}, check_paths=False)
    assert params.profile == "benchmarks"
    assert [(ref.name, ref.limit, ref.train_fraction) for ref in params.data.train] == [
        ("alpaca", 200, None), ("orb_h", 300, 0.5), ("orb_toxic", 200, None), ("advbench", 200, None)
    ]
    assert params.splits.exclude == ("models/testbed/training_prompts.json",)
    assert params.generate.batch_size == 16
    assert params.generate.max_new_tokens == 48  # base value survives the overlay
    assert params.data_root() == BENCHMARKS
    assert params.experiment_name == "eds-benchmarks"


def test_repo_paper_profile_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    params = parse({**repo_raw(), "profile": "paper"}, check_paths=False)
    assert params.model.id == "meta-llama/Llama-3.1-8B-Instruct"
    assert params.model.dtype == "auto"
    assert params.data.source == "hub"
    assert [ref.name for ref in params.data.train] == ["cares"]
    assert (params.generate.batch_size, params.generate.max_new_tokens) == (64, 256)
    assert params.generate.shard_size == 64  # untouched base key


# ------------------------------------------------------------------------------ messages name the key


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"foo": 1}, ["foo", "unknown key"]),
        ({"generate": {"batchsize": 3}}, ["generate.batchsize", "unknown key"]),
        ({"generate": {"batch_size": "eight"}}, ["generate.batch_size", "eight"]),
        ({"generate": {"batch_size": 0}}, ["generate.batch_size", "greater than or equal to 1"]),
        ({"generate": {"max_new_tokens": 9000}}, ["generate.max_new_tokens", "8192"]),
        ({"data": {"train": [{"name": "advbench", "limit": 0}]}}, ["data.train.0.limit"]),
        ({"data": {"train": []}}, ["data.train", "at least 1"]),
        ({"model": {"device": "gpu"}}, ["model.device", "gpu"]),
        ({"model": {"device": "cpu:0"}}, ["model.device", "cpu:0"]),
        ({"model": {"dtype": "fp8"}}, ["model.dtype", "fp8"]),
        ({"data": {"train": [{"name": "nope"}]}}, ["data.train.0.name", "unknown dataset 'nope'"]),
        ({"classify": {"judge": {"name": "llm"}}}, ["classify.judge", "unknown judge 'llm'"]),
        ({"classify": {"judge": {"name": "classifier"}}}, ["classify.judge.model_id"]),
        ({"data": {"train": [{"name": "advbench"}, {"name": "advbench"}]}}, ["data", "twice"]),
        ({"profile": "nope"}, ["profile", "unknown profile 'nope'"]),
        ({"profile": "x", "profiles": {"x": {"profile": "y"}}}, ["profiles.x", "cannot set 'profile'"]),
        ({"profiles": ["x"]}, ["profiles"]),
    ],
)
def test_errors_name_the_key(raw: dict[str, Any], needles: list[str]) -> None:
    message = error_of(raw)
    assert message.startswith("params.yaml: ")
    for needle in needles:
        assert needle in message


def test_invalid_child_reports_only_the_child() -> None:
    # The tuple's "too short after validation" would blame data.train for the bad limit.
    message = error_of({"data": {"train": [{"name": "advbench", "limit": 0}]}})
    assert message.count("\n") == 0
    assert "at least 1 item" not in message


def test_same_dataset_with_different_splits_is_allowed() -> None:
    params = parse({"data": {"train": [{"name": "harmbench"}, {"name": "harmbench", "split": "val"}]}},
                   check_paths=False)
    assert [ref.split for ref in params.data.train] == [None, "val"]


def test_classifier_with_model_id_is_fine() -> None:
    params = parse({"classify": {"judge": {"name": "classifier", "model_id": "org/model"}}}, check_paths=False)
    assert params.classify.judge.model_id == "org/model"


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("generate: [unclosed\n  batch_size: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(path)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found") as info:
        load(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_empty_params_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    assert load(path) == Params()


# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize(("section", "value"), [("id", "./nope"), ("id", "x.gguf"), ("adapter", "./nope")])
def test_missing_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    message = error_of({"model": {section: value}}, check_paths=True)
    assert f"model.{section}" in message and value in message
    assert parse({"model": {section: value}}, check_paths=False).model.model_dump()[section] == value


def test_existing_local_model_path_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    (tmp_path / "adapter").mkdir()
    params = parse({"model": {"id": "x.gguf", "adapter": "./adapter"}})
    assert params.model.id == "x.gguf"


def test_hub_ids_are_not_checked_as_paths() -> None:
    assert parse({"model": {"id": "org/model", "adapter": "org/lora"}}).model.adapter == "org/lora"


def test_unknown_embedded_model() -> None:
    assert "model.id" in error_of({"model": {"id": "embedded:nope"}}, check_paths=True)


def test_data_root_missing_only_matters_for_real_benchmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    missing = str(tmp_path / "missing")
    message = error_of({"data": {"root": missing, "train": [{"name": "advbench"}]}}, check_paths=True)
    assert "data.root" in message and missing in message and DATA_ROOT_ENV in message
    demo_only = {"data": {"root": missing, "train": [{"name": "demo_train"}, {"name": "demo_eval"}]}}
    assert parse(demo_only).data.root == missing
    hub = {"data": {"source": "hub", "root": missing, "train": [{"name": "advbench"}]}}
    assert parse(hub).data.source == "hub"


def test_env_overrides_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    raw = {"data": {"root": str(tmp_path / "missing"), "train": [{"name": "advbench"}]}}
    assert parse(raw, check_paths=False).data_root() == tmp_path / "missing"
    monkeypatch.setenv(DATA_ROOT_ENV, str(BENCHMARKS))
    params = parse(raw)  # the path check now uses the env root, which exists
    assert params.data_root() == BENCHMARKS


# ------------------------------------------------------------------------------ profiles and merging


def test_deep_merge_merges_mappings_and_replaces_lists() -> None:
    base = {"a": {"x": 1, "y": {"z": 2, "w": 3}}, "items": [1, 2, 3], "keep": "k"}
    snapshot = copy.deepcopy(base)
    merged = deep_merge(base, {"a": {"y": {"z": 20}, "new": 5}, "items": [9]})
    assert merged == {"a": {"x": 1, "y": {"z": 20, "w": 3}, "new": 5}, "items": [9], "keep": "k"}
    assert base == snapshot  # inputs are not mutated
    assert deep_merge({"a": {"x": 1}}, {"a": None}) == {"a": None}  # a non-mapping replaces
    assert deep_merge({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}


def test_profile_overlay_changes_one_key_and_keeps_the_rest() -> None:
    raw = {
        "profile": "benchmarks",
        "generate": {"batch_size": 8, "max_new_tokens": 99, "shard_size": 7},
        "profiles": {"benchmarks": {"generate": {"batch_size": 16}}, "other": {"generate": {"batch_size": 2}}},
    }
    params = parse(raw, check_paths=False)
    assert (params.generate.batch_size, params.generate.max_new_tokens, params.generate.shard_size) == (16, 99, 7)
    assert parse({**raw, "profile": "demo"}, check_paths=False).generate.batch_size == 8


def test_overlay_values_are_validated_too() -> None:
    raw = {"profile": "b", "profiles": {"b": {"generate": {"batch_size": -1}}}}
    assert "generate.batch_size" in error_of(raw)


# ------------------------------------------------------------------------------ property test


@settings(max_examples=150, deadline=None, database=None)
@given(
    key=st.sampled_from(["batch_size", "max_new_tokens"]),
    value=st.one_of(st.integers(-5, 9000), st.sampled_from([0, 1, 8192, 8193]), st.integers(-(10**12), 10**12)),
)
def test_bounds_property(key: str, value: int) -> None:
    ok = value >= 1 if key == "batch_size" else 1 <= value <= 8192
    raw = {"generate": {key: value}}
    if ok:
        assert getattr(parse(raw, check_paths=False).generate, key) == value
    else:
        with pytest.raises(ConfigError) as info:
            parse(raw, check_paths=False)
        assert f"generate.{key}" in str(info.value)


def test_configs_are_frozen() -> None:
    params = Params()
    with pytest.raises(ValidationError):
        params.generate.batch_size = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        params.profile = "paper"  # type: ignore[misc]
    assert params.generate.batch_size == 8 and params.profile == "demo"
