"""Orchestration for real: a Prefect server and an MLflow server on loopback, a served cron
deployment that runs the small pipeline, DVC variants logged to MLflow, a DVC push/pull round
trip on a fresh clone, and a 2-worker scale-out whose artifacts equal a single-process run's.

One module-scoped pipeline run (a tiny random Llama, 12 demo prompts) feeds every test; each
test works on its own copy of that workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import BIN, REPO, SMALL_RUN, run_in, tracked_files, write_params
from eds.config import Params, deep_merge
from eds.tracking import stage_run
from pipelines import servers
from test_orchestration_units import mlflow_state, steered_params  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CRON = "0 3 * * *"
DEPLOYMENT = "eds-test"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Servers:
    prefect: servers.RunningServer
    mlflow: servers.RunningServer
    home: Path

    def env(self, ws: Path) -> dict[str, str]:
        """The environment of a client process: the venv first, this Prefect server, polling fast."""
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_API_URL": self.prefect.api_url,
            "PREFECT_HOME": str(ws / ".prefect"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        }


@dataclass
class PipelineRun:
    ws: Path
    model: Path
    stages: list[str]
    deployment: dict[str, Any]
    flow_run: dict[str, Any]
    servers: Servers


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Api(httpx.Client):
    """The Prefect REST API, retrying what a busy sqlite-backed server answers (429, 5xx)."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        for attempt in range(8):
            response = super().request(*args, **kwargs)
            if response.status_code not in {429, 500, 502, 503, 504}:
                break
            time.sleep(0.5 * 2**attempt)
        return response


def api(server: Servers) -> Api:
    return Api(base_url=server.prefect.api_url, timeout=60)


def dvc_outs(ws: Path) -> list[str]:
    """Every output path declared in the workspace's dvc.yaml."""
    stages = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    outs = [o for s in stages.values() for key in ("outs", "metrics", "plots") for o in s.get(key, [])]
    return [next(iter(o)) if isinstance(o, dict) else str(o) for o in outs]


def make_workspace(dest: Path, overrides: dict[str, Any]) -> Path:
    """As conftest's ``workspace`` fixture, at module scope: project files (never a stage's output
    lying untracked in the checkout), small params, one commit."""
    outs = tuple(dvc_outs(REPO))
    for rel in tracked_files():
        if rel.startswith(outs):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    write_params(dest, deep_merge(SMALL_RUN, overrides))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "ws")
    return dest


def git(ws: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=ws, check=True, capture_output=True, text=True).stdout


def copy_workspace(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def stages_through(ws: Path, last: str) -> list[str]:
    """The workspace's DVC stages in dvc.yaml order, up to ``last``."""
    names = list(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    return names[: names.index(last) + 1]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A Prefect server (with UI) and an MLflow server on free loopback ports, started together."""
    home = tmp_path_factory.mktemp("servers")
    prefect = servers.launch(servers.prefect_spec(home / "prefect-home", servers.free_port()), home / "prefect.log")
    mlflow = servers.launch(
        servers.mlflow_spec(f"sqlite:///{home}/mlflow.db", home / "mlartifacts", servers.free_port()), home / "mlflow.log"
    )
    try:
        prefect.wait_healthy()
        mlflow.wait_healthy()
        yield Servers(prefect, mlflow, home)
    finally:
        prefect.stop()
        mlflow.stop()


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, live: Servers) -> Iterator[PipelineRun]:
    """``python -m pipelines.serve`` registers the cron deployment; one run is triggered through the API."""
    root = tmp_path_factory.mktemp("pipeline")
    overrides = {
        "model": {"id": str(tiny_model_dir)},
        "tracking": {"uri": live.mlflow.url},
        "generate": {"shard_size": 4},  # 12 prompts: 3 shards each, for the scale-out tests
        "extract": {"shard_size": 4, "batch_size": 4},
    }
    ws = make_workspace(root / "ws", overrides)
    stages = stages_through(ws, "extract")
    log = open(root / "serve.log", "wb")  # noqa: SIM115
    cmd = [str(BIN / "python"), "-m", "pipelines.serve", *stages, "--workspace", str(ws), "--cron", CRON, "--name", DEPLOYMENT]
    serve = subprocess.Popen(cmd, cwd=ws, env=live.env(ws), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with api(live) as client:

            def deployment() -> dict[str, Any] | None:
                if serve.poll() is not None:
                    raise AssertionError(f"serve exited {serve.returncode}:\n{(root / 'serve.log').read_text()[-3000:]}")
                response = client.get(f"/deployments/name/eds-pipeline/{DEPLOYMENT}")
                return response.json() if response.status_code == 200 else None

            found = wait_for("the served deployment", deployment, timeout=180)
            response = client.post(f"/deployments/{found['id']}/create_flow_run", json={})
            assert response.status_code == 201, response.text
            created = response.json()

            def finished() -> dict[str, Any] | None:
                run = client.get(f"/flow_runs/{created['id']}").json()
                return run if run["state_type"] in FINAL else None

            flow_run = wait_for("the triggered flow run", finished, timeout=600, every=2)
        yield PipelineRun(ws, tiny_model_dir, stages, found, flow_run, live)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()


def test_scheduled_deployment_runs_the_pipeline_and_reads_back(pipeline_run: PipelineRun) -> None:
    run, live = pipeline_run, pipeline_run.servers
    assert run.flow_run["state_type"] == "COMPLETED", run.flow_run["state"]
    assert run.flow_run["deployment_id"] == run.deployment["id"]
    (schedule,) = run.deployment["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["active"]
    assert run.deployment["parameters"] == {"stages": run.stages, "workspace": str(run.ws)}

    with api(live) as client:
        by_deployment = {"deployments": {"id": {"any_": [run.deployment["id"]]}}}

        def scheduled() -> list[dict[str, Any]]:
            body = {**by_deployment, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
            return client.post("/flow_runs/filter", json=body).json()

        upcoming = wait_for("runs created by the cron schedule", scheduled, timeout=120)
        assert all(r["expected_start_time"][11:16] == "03:00" for r in upcoming)

        tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run.flow_run["id"]]}}}).json()
        assert sorted(t["name"].rsplit("-", 1)[0] for t in tasks) == sorted(f"dvc repro {s}" for s in run.stages)
        assert {t["state_type"] for t in tasks} == {"COMPLETED"}

        def logs() -> list[str]:
            body = {"logs": {"flow_run_id": {"any_": [run.flow_run["id"]]}}, "limit": 200}
            lines = [entry["message"] for entry in client.post("/logs/filter", json=body).json()]
            return lines if any("Running stage 'classify'" in line for line in lines) else []

        messages = wait_for("the stage logs in the API", logs, timeout=60)
        assert any("Running stage 'generate'" in m for m in messages)
        assert client.get(live.prefect.url).text.lstrip().startswith("<!DOCTYPE html>")  # the UI is served

    assert "Data and pipelines are up to date" in run_in(run.ws, "dvc", "status", "extract").stdout
    assert json.loads((run.ws / "reports/metrics/classify.json").read_text())["n"] == 12


def test_variants_become_dvc_experiments_found_in_the_mlflow_server(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    ws = copy_workspace(pipeline_run.ws, tmp_path / "ws")
    env = pipeline_run.servers.env(ws)
    cmd = [str(BIN / "python"), "-m", "pipelines.variants", "--grid", "generate.max_new_tokens=[4, 6]", "generate"]
    out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in results] == ["generate.max_new_tokens=4", "generate.max_new_tokens=6"]
    experiments = run_in(ws, "dvc", "exp", "list", "--name-only").stdout.split()
    assert {r["experiment"] for r in results} <= set(experiments)

    client = MlflowClient(tracking_uri=pipeline_run.servers.mlflow.url)
    experiment = client.get_experiment_by_name("eds-demo")
    found = client.search_runs(
        [experiment.experiment_id], filter_string="tags.stage = 'generate' and tags.sweep LIKE 'eds-variants/%'"
    )
    by_tokens = {run.data.params["generate.max_new_tokens"]: run for run in found}
    assert set(by_tokens) == {"4", "6"}
    for tokens, logged in by_tokens.items():
        tags = logged.data.tags
        assert tags["variant"] == f"generate.max_new_tokens={tokens}"
        assert tags["override.generate.max_new_tokens"] == tokens
        assert tags["model"] == str(pipeline_run.model)
        assert tags["git_sha"] not in {"", "unknown"} and tags["dvc_lock"] not in {"", "none"}
        assert tags["prefect_flow_run_id"]
    one = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`override.generate.max_new_tokens` = '4'"
    )
    assert [r.info.run_id for r in one] == [by_tokens["4"].info.run_id]


@pytest.mark.usefixtures("mlflow_state")
def test_eta_variants_logged_to_the_mlflow_server_are_found_by_search(
    pipeline_run: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two eta variants through eds.tracking.stage_run (the params' ``steer`` section), found again
    through the server's search API by tag and by param."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    url = pipeline_run.servers.mlflow.url
    dump = Params().model_dump()
    base = Params(**{**dump, "tracking": {**dump["tracking"], "uri": url, "experiment": "eds-eta"}})
    for eta in (0.1, 0.5):
        with stage_run(steered_params(base, eta=eta, steps=2, layers=[4]), "steer") as run:
            run.log_metrics({"refusal_rate/demo_eval/benign": eta / 2})

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("eds-eta")
    runs = client.search_runs([experiment.experiment_id], order_by=["tags.eta ASC"])
    assert [r.data.tags["eta"] for r in runs] == ["0.1", "0.5"]
    assert [r.data.params["steer.eta"] for r in runs] == ["0.1", "0.5"]
    assert {r.data.tags["layers"] for r in runs} == {"[4]"}
    (half,) = client.search_runs([experiment.experiment_id], filter_string="tags.eta = '0.5'")
    assert half.data.metrics["refusal_rate/demo_eval/benign"] == pytest.approx(0.25)
    (low,) = client.search_runs([experiment.experiment_id], filter_string="params.`steer.eta` = '0.1'")
    assert low.data.tags["eta"] == "0.1"


def test_dvc_push_then_pull_on_a_fresh_clone_restores_every_artifact(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    ws = copy_workspace(pipeline_run.ws, tmp_path / "ws")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "pipeline results")
    assert str(tmp_path / "eds-dvc-remote") in run_in(ws, "dvc", "remote", "list").stdout  # beside the checkout
    run_in(ws, "dvc", "push")
    assert any((tmp_path / "eds-dvc-remote").rglob("*"))

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    assert not (clone / "data" / "responses").exists()
    run_in(clone, "dvc", "pull", "--with-deps", "extract")  # what ran (after a full `dvc repro`: `dvc pull`)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    outs = sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])})
    assert {"data/responses", "data/labels.parquet", "reports/metrics/classify.json", "data/activations"} <= set(outs)
    for rel in outs:
        original, pulled = ws / rel, clone / rel
        if original.is_dir():
            assert tree(pulled) == tree(original), rel
        else:
            assert pulled.read_bytes() == original.read_bytes(), rel
    assert "Data and pipelines are up to date" in run_in(clone, "dvc", "status", "extract").stdout

    # The remote is configurable per machine without touching the committed config.
    elsewhere = tmp_path / "other-remote"
    run_in(ws, "dvc", "remote", "modify", "--local", "local", "url", str(elsewhere))
    run_in(ws, "dvc", "push")
    assert any(elsewhere.rglob("*"))


def test_two_worker_scaleout_equals_the_single_process_run(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    """generate and extract on a 2-process pool, then through DVC: the same bytes, the same dvc.lock."""
    reference = pipeline_run.ws
    ws = copy_workspace(reference, tmp_path / "ws")
    sharded = ["data/responses", "data/activations"]
    for rel in sharded:
        shutil.rmtree(ws / rel)
    stages = ["generate", "extract"]  # classify's inputs do not change, so DVC needs no rerun of it
    cmd = [str(BIN / "python"), "-m", "pipelines.scaleout", *stages, "--runner", "process", "--workers", "2"]
    out = subprocess.run(cmd, cwd=ws, env=pipeline_run.servers.env(ws), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert [result[f"{stage} shards"]["written_shards"] for stage in ("generate", "extract")] == [3, 3]
    assert len(result["generate shards"]["worker_pids"]) == 2  # both workers took shards
    for rel in sharded:
        assert tree(ws / rel) == tree(reference / rel), rel  # byte for byte
    # DVC recorded the merged outputs with the single-process run's hashes: same lock, nothing to do.
    assert (ws / "dvc.lock").read_bytes() == (reference / "dvc.lock").read_bytes()
    assert "Data and pipelines are up to date" in run_in(ws, "dvc", "status", "extract").stdout


def test_dask_local_cluster_scaleout_equals_the_single_process_run(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    pytest.importorskip("prefect_dask", reason="the optional 'scale' extra (prefect-dask) is not installed")
    reference = pipeline_run.ws
    ws = copy_workspace(reference, tmp_path / "ws")
    shutil.rmtree(ws / "data" / "responses")
    cmd = [str(BIN / "python"), "-m", "pipelines.scaleout", "generate", "--shards-only", "--runner", "dask", "--workers", "2"]
    out = subprocess.run(cmd, cwd=ws, env=pipeline_run.servers.env(ws), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{") :])["generate"]
    assert result["written_shards"] == 3 and len(result["worker_pids"]) == 2
    assert tree(ws / "data" / "responses") == tree(reference / "data" / "responses")  # shards and manifest
