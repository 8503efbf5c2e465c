"""eds.tracking: flattening, secret filtering, and a real MLflow run in a temporary sqlite store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from eds.config import Params, parse
from eds.tracking import MAX_PARAM_CHARS, StageRun, dvc_lock_hash, flatten, loggable_params, stage_run

# ------------------------------------------------------------------------------ flatten / params


def test_flatten_nested_and_lists() -> None:
    flat = flatten({"a": {"b": {"c": 1}, "d": [1, {"x": 2}]}, "e": None, "f": (1, 2), "g": "s", "h": {}})
    assert flat == {"a.b.c": 1, "a.d": '[1, {"x": 2}]', "e": None, "f": "[1, 2]", "g": "s"}
    assert json.loads(flat["a.d"]) == [1, {"x": 2}]


def test_flatten_scalar_with_prefix() -> None:
    assert flatten(3, "top.") == {"top": 3}


def secretish(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return last.endswith(("token", "password", "passwd", "api_key", "apikey", "secret"))


class SecretParams(Params):
    """A real Params with extra secret-looking fields, as a user might add."""

    hf_token: str = "hf_SECRETVALUE"
    db_password: str = "hunter2-SECRETVALUE"
    openai_api_key: str = "sk-SECRETVALUE"
    seed_note: str = "kept"


def test_loggable_params_keeps_config_as_strings() -> None:
    params = Params()
    logged = loggable_params(params)
    assert logged["generate.batch_size"] == "8"
    assert logged["model.id"] == params.model.id
    assert json.loads(logged["data.train"]) == [{"name": "demo_train", "limit": None, "split": None, "train_fraction": None}]
    assert all(isinstance(v, str) for v in logged.values())
    assert not any(secretish(key) for key in logged)
    # "token" inside a longer word is not a secret: token budgets must reach MLflow
    assert logged["generate.max_new_tokens"] == "48" and logged["generate.max_prompt_tokens"] == "512"
    assert set(logged) == set(flatten(params.model_dump(mode="json")))  # nothing legitimate dropped


def test_loggable_params_drops_secret_looking_keys() -> None:
    logged = loggable_params(SecretParams())
    assert {"hf_token", "db_password", "openai_api_key"}.isdisjoint(logged)
    assert not any(secretish(key) for key in logged)
    assert not any("SECRETVALUE" in value for value in logged.values())
    assert logged["seed_note"] == "kept" and "generate.batch_size" in logged


def test_loggable_params_drops_token_looking_values() -> None:
    leaked = parse({"model": {"system_prompt": "hf_" + "A1b2" * 8}}, check_paths=False)
    assert "model.system_prompt" not in loggable_params(leaked)
    fine = parse({"model": {"system_prompt": "Be helpful."}}, check_paths=False)
    assert loggable_params(fine)["model.system_prompt"] == "Be helpful."


def test_loggable_params_truncates_long_values() -> None:
    params = parse({"model": {"system_prompt": "x" * (MAX_PARAM_CHARS + 500)}}, check_paths=False)
    assert len(loggable_params(params)["model.system_prompt"]) == MAX_PARAM_CHARS


# ------------------------------------------------------------------------------ real MLflow runs


@pytest.fixture
def mlflow_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stage_run sets MLflow's process-wide tracking URI and experiment: restore them afterwards."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri, raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


def tracked_params(uri: str, **tracking: object) -> Params:
    return parse(
        {
            "generate": {"batch_size": 4},
            "data": {"train": [{"name": "demo_train", "limit": 5}]},
            "tracking": {"uri": uri, **tracking},
        },
        check_paths=False,
    )


@pytest.mark.timeout(120)
def test_stage_run_logs_a_real_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_state: None) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # run tags read git and dvc.lock from the CWD
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = tracked_params(uri)

    with stage_run(params, "generate") as run:
        assert isinstance(run, StageRun) and run.run_id
        run.log_metrics({"refusal_rate/demo_train/benign": 0.25, "n:items": 5})
        run.log_metrics({"loss": 1.5}, step=0)
        run.log_metrics({"loss": 0.5}, step=1)
        run.set_tags({"note": "hello"})
        run_id = run.run_id
    assert mlflow.active_run() is None
    assert (tmp_path / "mlflow.db").is_file()

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("eds-demo")
    assert experiment is not None and experiment.name == params.experiment_name
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    logged = runs[0]
    assert logged.info.run_name == "generate" and logged.info.status == "FINISHED"

    assert logged.data.params["generate.batch_size"] == "4"
    assert json.loads(logged.data.params["data.train"])[0]["limit"] == 5
    assert logged.data.params == loggable_params(params)

    metrics = logged.data.metrics
    assert metrics["refusal_rate/demo_train/benign"] == pytest.approx(0.25)
    assert metrics["n_items"] == pytest.approx(5.0)  # ':' is not a legal metric character
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.5, 0.5]

    tags = logged.data.tags
    assert tags["stage"] == "generate" and tags["profile"] == "demo"
    assert tags["model"] == params.model.id and tags["note"] == "hello"
    assert tags["git_sha"]  # "unknown" outside a git checkout
    expected_lock = hashlib.sha256((tmp_path / "dvc.lock").read_bytes()).hexdigest()[:16]
    assert tags["dvc_lock"] == expected_lock == dvc_lock_hash(tmp_path / "dvc.lock")

    # a second stage lands in the same experiment, named after its stage
    with stage_run(params, "classify"):
        pass
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert names == {"generate", "classify"}


@pytest.mark.timeout(120)
def test_configured_experiment_name_and_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_state: None
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = tracked_params(uri, experiment="my-exp")
    with pytest.raises(KeyError):
        with stage_run(params, "classify"):
            raise KeyError("boom")
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("eds-demo") is None
    experiment = client.get_experiment_by_name("my-exp")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "classify" and logged.info.status == "FAILED"
    assert logged.data.tags["dvc_lock"] == "none"


def test_tracking_disabled_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = tracked_params(f"sqlite:///{tmp_path}/mlflow.db", enabled=False)
    with stage_run(params, "generate") as run:
        assert run.run_id is None
        run.log_metrics({"refusal_rate/demo_train/benign": 0.5})
        run.set_tags({"x": "y"})
    assert list(tmp_path.iterdir()) == []


def test_relative_sqlite_uri_follows_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_state: None
) -> None:
    """MLflow caches a store per URI string: a relative sqlite URI must be made absolute, or the
    second project folder would log into the first folder's database."""
    from mlflow import MlflowClient

    from eds.tracking import resolve_uri

    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{folder / 'mlflow.db'}"
        with stage_run(tracked_params("sqlite:///mlflow.db"), name):
            pass
    for name in ("one", "two"):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("eds-demo").experiment_id])
        assert [run.data.tags["stage"] for run in runs] == [name]
