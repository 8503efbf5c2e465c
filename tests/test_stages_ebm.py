"""Integration: the split, extract, train and select stages on the tiny random Llama.

The full pipeline on the embedded model through DVC runs in tests/test_stages.py; here the
stages run in-process (or as a CLI subprocess for the kill test) on a 2-layer model, so every
branch is fast: extraction resume after SIGKILL, the protocol's train/eval separation, EBM
artifacts and their metadata, MLflow curves, selection outputs and clear errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import BIN, REPO, run_in, write_params

pytestmark = pytest.mark.integration

TINY_RUN: dict[str, Any] = {
    "data": {"train": [{"name": "demo_train", "limit": 40, "train_fraction": 0.75}]},
    "splits": {"val_fraction": 0.3},
    "generate": {"batch_size": 8, "max_new_tokens": 4, "shard_size": 16},
    "extract": {"batch_size": 4, "shard_size": 8, "dtype": "float32"},
    "train": {"widths": [16, 8], "epochs": 4, "batch_size": 8, "lr": 1.0e-3},
    "select": {"k": 2},
    "tracking": {"enabled": True},
}


def make_project(folder: Path, model_dir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A folder with a params.yaml for the tiny model (no git, no DVC: stages run directly)."""
    return write_params(folder, TINY_RUN, {"model": {"id": str(model_dir), "adapter": None}}, overrides or {})


def test_paths_and_stage_order_agree_with_dvc_yaml() -> None:
    from pipelines import paths
    from pipelines.registry import STAGES

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    # Every registered stage is in dvc.yaml, in registry order (dvc.yaml may hold others, e.g. the
    # frozen testbed stage that is not run through the registry).
    assert [name for name in dvc["stages"] if name in STAGES] == list(STAGES)
    chain = ["split", "generate", "classify", "extract", "train", "select"]
    assert [name for name in STAGES if name in chain] == chain
    declared = set()
    for stage in dvc["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    for name, value in vars(paths).items():
        if isinstance(value, Path):  # declared itself, or inside a declared output folder
            assert str(value) in declared or str(value.parent) in declared, name
    assert dvc["stages"]["extract"]["outs"][0]["data/activations"]["persist"] is True


def test_stages_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eds.activation_store import ActivationStore
    from eds.config import ConfigError
    from eds.ebm import EBMLoadError, load_ebm
    from eds.splits import check_disjoint, keys_of, read_splits
    from pipelines.registry import run_stage

    project = make_project(tmp_path / "p", tiny_model_dir)
    monkeypatch.chdir(project)
    for stage in ("split", "generate", "classify", "extract", "train"):
        run_stage(stage)
    summary = run_stage("select")

    # The protocol: eval prompts (25% of demo_train here) never reach generation or training.
    rows = read_splits("data/splits/splits.parquet")
    eval_rows = [r for r in rows if r.split == "eval"]
    assert len(eval_rows) == 10 and {r.split for r in rows} == {"train", "val", "eval"}
    store = ActivationStore("data/activations", verify=True)
    assert {row["item_id"] for row in store.index} == {r.item_id for r in rows if r.split != "eval"}
    check_disjoint({row["text_key"] for row in store.index}, eval_rows)
    check_disjoint(keys_of(rows), eval_rows)
    assert (store.n_layers, store.hidden_size) == (2, 32)

    # EBMs: one per layer, metadata, hidden-size check.
    ebm_manifest = json.loads(Path("models/ebm/manifest.json").read_text())
    assert ebm_manifest["layers"] == [0, 1]
    artifact = load_ebm("models/ebm/layer_01", hidden_size=32)
    meta = artifact.metadata
    assert meta["layer"] == 1 and meta["hidden_size"] == 32 and meta["standardization"]["applied"] is True
    assert meta["train_data_sha256"] == ebm_manifest["train_data_sha256"] and 1 <= meta["best_epoch"] <= 4
    assert not artifact.model.training and float(artifact.model.std.min()) > 0
    with pytest.raises(EBMLoadError, match="hidden size"):
        load_ebm("models/ebm/layer_01", hidden_size=576)

    # Selection outputs.
    selection = json.loads(Path("models/selection.json").read_text())
    assert selection["k"] == 2 and sorted(selection["layers"]) == [0, 1] and set(selection["scores"]) == {"0", "1"}
    metrics = json.loads(Path("reports/metrics/select.json").read_text())
    assert any("auroc" in key for key in metrics) and 0.0 <= metrics["best_val_auroc"] <= 1.0
    assert summary["best_val_auroc"] == pytest.approx(metrics["best_val_auroc"], abs=1e-4)
    assert Path("reports/plots/layer_scores.png").stat().st_size > 1000
    assert Path("reports/plots/layer_scores.csv").read_text().startswith("layer,auroc,pairwise_accuracy")
    train_metrics = json.loads(Path("reports/metrics/train.json").read_text())
    assert set(train_metrics["layers"]) == {"00", "01"}

    # MLflow: per-layer loss curves (step = epoch) and per-layer scores.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([client.get_experiment_by_name("eds-demo").experiment_id])}
    curve = client.get_metric_history(runs["train"].info.run_id, "layer_01/val_loss")
    assert [m.step for m in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 1
    assert "layer_00/val_auroc" in runs["select"].data.metrics

    # k larger than the layer count: a clear params error.
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["select"]["k"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"select\.k: 3 is more than the model's 2 layers"):
        run_stage("select")


KILL_AFTER_FIRST_SHARD = """
import os, signal
from eds.activation_store import ActivationWriter
from pipelines.registry import run_stage

original = ActivationWriter.write_shard

def write_then_die(self, index, states):
    digest = original(self, index, states)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after the first shard is complete
    return digest

ActivationWriter.write_shard = write_then_die
run_stage("extract")
"""


def test_extract_resumes_after_kill_with_no_duplicate(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eds.activation_store import ActivationStore
    from pipelines.registry import run_stage

    project = make_project(tmp_path / "killed", tiny_model_dir, {"tracking": {"enabled": False}})
    monkeypatch.chdir(project)
    run_stage("split")
    _fake_labels(project)
    fresh = tmp_path / "fresh"
    shutil.copytree(project, fresh)

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    killed = subprocess.run([str(BIN / "python"), "-c", KILL_AFTER_FIRST_SHARD], cwd=project, env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    manifest = json.loads((project / "data/activations/manifest.json").read_text())
    assert manifest["complete"] is False and list(manifest["shards"]) == ["shard-00000.h5"]
    first = (project / "data/activations/shard-00000.h5").read_bytes()

    out = run_in(project, "python", "-m", "pipelines", "extract")
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["n_shards"] == 4 and summary["extracted_shards"] == 3
    assert (project / "data/activations/shard-00000.h5").read_bytes() == first  # kept, not redone

    run_in(fresh, "python", "-m", "pipelines", "extract")
    resumed, clean = ActivationStore(project / "data/activations", verify=True), ActivationStore(fresh / "data/activations", verify=True)
    ids = [row["item_id"] for row in resumed.index]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert resumed.index == clean.index
    assert resumed.manifest["shards"] == clean.manifest["shards"]  # byte-identical shards
    assert sorted(p.name for p in (project / "data/activations").iterdir()) == sorted(
        p.name for p in (fresh / "data/activations").iterdir()
    )


def _fake_labels(project: Path) -> None:
    """data/labels.parquet for the split's train/val rows, as classify writes it (no generation)."""
    from eds.records import atomic_write_parquet
    from eds.splits import read_splits

    rows = []
    for i, row in enumerate(r for r in read_splits(project / "data/splits/splits.parquet") if r.split != "eval"):
        refused = i % 7 == 0
        rows.append({
            "item_id": row.item_id, "dataset": row.dataset, "prompt_type": row.prompt_type, "category": row.category,
            "prompt": row.prompt, "response": "I'm sorry." if refused else "Sure.", "model": "tiny",
            "refused": refused, "reason": "", "label": "good" if (row.prompt_type == "benign") != refused else "bad",
            "judge": "keyword", "judge_version": "1",
        })
    atomic_write_parquet(project / "data/labels.parquet", rows)
    assert pq.read_table(project / "data/labels.parquet").num_rows == 30
