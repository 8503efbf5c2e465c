"""Integration: the real stages on the embedded model, through the CLI, DVC and Prefect, in
throwaway workspaces (12 demo prompts, 8 new tokens, shards of 4; generate reads the split
stage's artifact, so the split stage runs first)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import BIN, REPO, run_in

pytestmark = pytest.mark.integration


def _rows(ws: Path) -> list[dict]:
    from eds.records import read_table_rows

    return read_table_rows(ws / "data" / "responses")


def _kill_after_first_shard(ws: Path) -> int:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(BIN / "python"), "-m", "pipelines", "generate"],
        cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    first = ws / "data" / "responses" / "shard-00000.parquet"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_generate_resumes_after_kill_with_no_duplicate(workspace: Path, tmp_path: Path) -> None:
    run_in(workspace, "python", "-m", "pipelines", "split")
    code = _kill_after_first_shard(workspace)
    assert code == -signal.SIGKILL
    manifest = json.loads((workspace / "data/responses/manifest.json").read_text())
    assert manifest["complete"] is False
    done_before = sorted(p.name for p in (workspace / "data/responses").glob("shard-*.parquet"))
    assert "shard-00000.parquet" in done_before and len(done_before) < 3
    first_shard = (workspace / "data/responses/shard-00000.parquet").read_bytes()

    out = run_in(workspace, "python", "-m", "pipelines", "generate")
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["generated_shards"] == 3 - len(done_before)
    assert (workspace / "data/responses/shard-00000.parquet").read_bytes() == first_shard  # kept, not redone
    resumed = _rows(workspace)

    fresh = tmp_path / "fresh"
    subprocess.run(["cp", "-r", str(workspace), str(fresh)], check=True)
    subprocess.run(["rm", "-rf", str(fresh / "data" / "responses")], check=True)
    run_in(fresh, "python", "-m", "pipelines", "generate")
    expected = _rows(fresh)

    ids = [row["item_id"] for row in resumed]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert resumed == expected


def test_classify_labels_every_response_and_logs_to_mlflow(workspace: Path) -> None:
    run_in(workspace, "python", "-m", "pipelines", "split")
    run_in(workspace, "python", "-m", "pipelines", "generate")
    run_in(workspace, "python", "-m", "pipelines", "classify")
    labels = pq.read_table(workspace / "data/labels.parquet").to_pylist()
    assert len(labels) == 12
    for row in labels:
        assert row["judge"] == "keyword" and row["judge_version"]
        assert row["label"] in {"good", "bad"}
        good = (row["prompt_type"] == "benign") != row["refused"]
        assert row["label"] == ("good" if good else "bad")
    metrics = json.loads((workspace / "reports/metrics/classify.json").read_text())
    assert metrics["n"] == 12
    assert set(metrics["refusal"]["demo_train"]) <= {"benign", "harmful"}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("eds-demo")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {run.data.tags["stage"]: run for run in runs}
    assert set(by_stage) == {"split", "generate", "classify"}
    classify = by_stage["classify"]
    assert "refusal_rate/demo_train/benign" in classify.data.metrics
    assert classify.data.params["generate.max_new_tokens"] == "8"
    assert classify.data.tags["git_sha"] not in {"", "unknown"}


def test_dvc_repro_then_nothing_changed(workspace: Path) -> None:
    first = run_in(workspace, "dvc", "repro")
    for stage in ("split", "generate", "classify", "extract", "train", "select", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    status = run_in(workspace, "dvc", "status")
    assert "Data and pipelines are up to date" in status.stdout
    second = run_in(workspace, "dvc", "repro")
    assert "Running stage" not in second.stdout
    metrics = run_in(workspace, "dvc", "metrics", "show", "--json")
    assert "refusal" in metrics.stdout and "best_val_auroc" in metrics.stdout
    assert "demo_benign/eds/compliance" in metrics.stdout and "demo_mc/none/accuracy_ci_low" in metrics.stdout
    selection = json.loads((workspace / "models/selection.json").read_text())
    assert len(selection["layers"]) == 2 and len(selection["scores"]) == 30

    # A judge param change reruns classify only.
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["classify"]["judge"]["window"] = 80
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_in(workspace, "dvc", "repro")
    assert "Running stage 'classify'" in third.stdout and "Running stage 'generate'" not in third.stdout


def test_invalid_params_fail_before_any_model_loads(workspace: Path) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["generate"]["batch_size"] = 0
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_in(workspace, "python", "-m", "pipelines", "generate", check=False)
    assert out.returncode == 2
    assert "generate.batch_size" in out.stderr
    assert not (workspace / "data" / "responses").exists()


def test_prefect_flow_drives_the_same_stages_through_dvc(workspace: Path) -> None:
    out = run_in(workspace, "python", "-m", "pipelines.flow", timeout=900)
    assert "'generate': 'ran'" in out.stdout and "'classify': 'ran'" in out.stdout
    assert "Data and pipelines are up to date" in run_in(workspace, "dvc", "status").stdout
    again = run_in(workspace, "python", "-m", "pipelines.flow", timeout=900)
    assert "'generate': 'skipped (unchanged)'" in again.stdout
    assert REPO.exists()
