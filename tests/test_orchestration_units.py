"""Orchestration pieces that need no server: run tags, variant specs, the workspace lock, the
server command lines (loopback only), and the DVC remote configuration."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from eds.config import Params, parse
from eds.tracking import RUN_TAGS_ENV, env_tags, run_tags, stage_run, steering_tags
from pipelines import servers, variants
from pipelines.flow import lock_path, workspace_lock

# ------------------------------------------------------------------------------ tags


def test_steering_tags_from_either_section_and_absent_when_missing() -> None:
    assert steering_tags({"steer": {"eta": 0.5, "steps": 2, "layers": [10, 12]}}) == {
        "eta": "0.5", "steps": "2", "layers": "[10, 12]",
    }  # fmt: skip
    assert steering_tags({"steering": {"eta": 1.0, "layers": None}}) == {"eta": "1.0"}
    assert steering_tags({"generate": {"max_new_tokens": 8}}) == {}
    steer = Params().steer  # the real params: layers null (the selected ones) gives no layers tag
    assert steering_tags(Params().model_dump(mode="json")) == {"eta": str(steer.eta), "steps": str(steer.steps)}


def test_env_tags_reads_a_json_object_and_ignores_garbage() -> None:
    assert env_tags({RUN_TAGS_ENV: '{"variant": "a=1", "n": 3, "none": null}'}) == {"variant": "a=1", "n": "3"}
    assert env_tags({RUN_TAGS_ENV: "not json"}) == {}
    assert env_tags({RUN_TAGS_ENV: "[1, 2]"}) == {}
    assert env_tags({}) == {}


def test_run_tags_merge_base_env_and_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps({"variant": "v1", "sweep": "s"}))
    tags = run_tags(Params(), "generate", {"runner": "dask", "sweep": "override"})
    assert tags["stage"] == "generate" and tags["model"] == Params().model.id and tags["dvc_lock"] == "none"
    assert tags["variant"] == "v1" and tags["runner"] == "dask" and tags["sweep"] == "override"


def steered_params(base: Params, **steer: object) -> Params:
    """``base`` with its ``steer`` section (EDS at inference: eta, steps, layers) replaced."""
    return Params(**{**base.model_dump(), "steer": {**base.steer.model_dump(), **steer}})


@pytest.fixture
def mlflow_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", RUN_TAGS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri, raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.mark.timeout(120)
def test_stage_run_carries_eta_env_and_extra_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_state: None
) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    raw = {"tracking": {"uri": uri}, "data": {"train": [{"name": "demo_train", "limit": 2}]}}
    base = parse(raw, check_paths=False)
    params = steered_params(base, eta=0.5, steps=3, layers=[4, 6])
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps({"variant": "steer.eta=0.5"}))
    with stage_run(params, "steer", extra_tags={"runner": "process"}) as run:
        run_id = run.run_id
    logged = MlflowClient(tracking_uri=uri).get_run(run_id)
    tags = logged.data.tags
    assert (tags["eta"], tags["steps"], tags["layers"]) == ("0.5", "3", "[4, 6]")
    assert tags["variant"] == "steer.eta=0.5" and tags["runner"] == "process" and tags["stage"] == "steer"
    assert logged.data.params["steer.eta"] == "0.5"


# ------------------------------------------------------------------------------ variants


def test_variant_labels_grid_and_dvc_arguments() -> None:
    assert variants.grid({"steer.eta": [0.1, 0.5], "steer.layers": [[10], [10, 12]]}) == [
        {"steer.eta": 0.1, "steer.layers": [10]},
        {"steer.eta": 0.1, "steer.layers": [10, 12]},
        {"steer.eta": 0.5, "steer.layers": [10]},
        {"steer.eta": 0.5, "steer.layers": [10, 12]},
    ]
    overrides = {"steer.layers": [10, 12], "model.id": "org/m", "model.adapter": None, "x.flag": True}
    assert variants.override_args(overrides) == [
        "-S", "steer.layers=[10, 12]", "-S", "model.id=org/m", "-S", "model.adapter=null", "-S", "x.flag=true",
    ]  # fmt: skip
    assert variants.label({"b": 2, "a": "x"}) == "a=x,b=2" and variants.label({}) == "base"
    assert variants.params_files({"a.b": 1, "other.yaml:c": 2}) == {"params.yaml", "other.yaml"}


def test_variants_cli_parses_grid_and_variant_specs() -> None:
    assert variants._parse_grid("steer.eta=[0.1, 0.5]") == ("steer.eta", [0.1, 0.5])
    assert variants._parse_variant("{steer.eta: 0.5, model.id: org/m}") == {"steer.eta": 0.5, "model.id": "org/m"}
    for bad in ("steer.eta", "steer.eta=0.5", "steer.eta=[]"):
        with pytest.raises(Exception, match="--grid"):
            variants._parse_grid(bad)


# ------------------------------------------------------------------------------ workspace lock


def test_workspace_lock_serialises_dvc_runs(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    assert lock_path(tmp_path) == tmp_path / ".dvc" / "tmp" / "eds-orchestration.lock"
    inside: list[int] = []
    overlaps: list[bool] = []

    def hold(n: int) -> None:
        with workspace_lock(tmp_path):
            inside.append(n)
            overlaps.append(len(inside) > 1)
            time.sleep(0.2)
            inside.remove(n)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [False, False, False]


# ------------------------------------------------------------------------------ servers and remote


def test_server_command_lines_bind_loopback_with_state_given(tmp_path: Path) -> None:
    prefect = servers.prefect_spec(tmp_path / "home", 4321)
    assert prefect.argv[prefect.argv.index("--host") + 1] == "127.0.0.1"
    assert prefect.env["PREFECT_HOME"] == str((tmp_path / "home").resolve())
    assert prefect.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert prefect.api_url == "http://127.0.0.1:4321/api"
    mlflow = servers.mlflow_spec("sqlite:///x.db", tmp_path / "art", 5432)
    assert mlflow.argv[mlflow.argv.index("--host") + 1] == "127.0.0.1"
    assert mlflow.argv[mlflow.argv.index("--workers") + 1] == "1"
    assert mlflow.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert servers.free_port() > 0


def test_default_dvc_remote_is_a_folder_beside_the_checkout() -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["core"]["remote"] == "local"
    url = config['\'remote "local"\'']["url"]
    assert (REPO / ".dvc" / url).resolve() == (REPO.parent / "eds-dvc-remote").resolve()


def test_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("setup:", "run:", "run-benchmarks:", "test:", "benchmark-generation:",
                   "prefect-server:", "serve:", "mlflow-ui:", "setup-scale:"):  # fmt: skip
        assert f"\n{target}" in makefile, target


def test_scaleout_runners() -> None:
    from prefect.task_runners import ProcessPoolTaskRunner

    from pipelines.scaleout import task_runner

    assert isinstance(task_runner("process", 2), ProcessPoolTaskRunner)
    with pytest.raises(ValueError, match="needs --address"):
        task_runner("ray", 2)  # never an implicit local Ray: it would listen on every interface
    with pytest.raises(ValueError, match="unknown runner"):
        task_runner("spark", 2)
