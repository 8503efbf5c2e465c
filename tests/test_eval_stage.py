"""Integration: the evaluate and report stages on the tiny random Llama, after split..select.

Checks the metric keys, the stored responses (variant, judge), resumption without generating,
re-judging without generating, a benchmark that is not available being reported as such, the
leak check, the nested MLflow runs of the sweep, and the report's files (benign samples only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import write_params

pytestmark = pytest.mark.integration

TINY: dict[str, Any] = {
    "model": {"adapter": None},  # the tiny random model takes no adapter
    "data": {"train": [{"name": "demo_train", "limit": 40, "train_fraction": 0.75}]},
    "splits": {"val_fraction": 0.3},
    "generate": {"batch_size": 8, "max_new_tokens": 4, "shard_size": 16},
    "extract": {"batch_size": 8, "shard_size": 16, "dtype": "float32"},
    "train": {"widths": [16, 8], "epochs": 3, "batch_size": 8, "lr": 1.0e-3},
    "select": {"k": 2},
    "steer": {"eta": 0.5, "steps": 2},
    "evaluate": {
        "tasks": [{"name": "demo_benign", "limit": 6}, {"name": "demo_harmful", "limit": 4}, {"name": "demo_mc", "limit": 3},
                  {"name": "demo_math", "limit": 2}, {"name": "math", "limit": 2}],
        "sweep": {"eta": [2.0], "steps": []},
        "batch_size": 8, "max_new_tokens": 5, "math_max_new_tokens": 6, "bootstrap_samples": 200,
        "generalisation": {"epochs": 2}, "samples": 2,
    },
    "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db"},
}
VARIANTS = ["none", "system_prompt", "eds", "mean_diff", "ablation", "eds_eta2_s2"]


def write_tiny_params(folder: Path, model_dir: Path, overrides: dict[str, Any] | None = None) -> None:
    write_params(folder, TINY, {"model": {"id": str(model_dir)}}, overrides or {})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Path]:
    """A tiny project run through split..select, evaluate and report (cwd while the module runs)."""
    import torch

    from pipelines.registry import run_stage

    folder = tmp_path_factory.mktemp("eval-project")
    write_tiny_params(folder, tiny_model_dir)
    before = Path.cwd()
    threads = torch.get_num_threads()
    os.chdir(folder)
    try:
        for stage in ("split", "generate", "classify", "extract", "train", "select", "evaluate", "report"):
            run_stage(stage)
        yield folder
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)


def test_metric_keys_name_task_variant_and_metric(project: Path) -> None:
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for variant in VARIANTS:
        for task, metric in (("demo_benign", "compliance"), ("demo_harmful", "refusal"), ("demo_mc", "accuracy"),
                             ("demo_math", "accuracy")):
            for suffix in ("", "_ci_low", "_ci_high"):
                assert f"{task}/{variant}/{metric}{suffix}" in metrics
            assert metrics[f"{task}/{variant}/{metric}_ci_low"] <= metrics[f"{task}/{variant}/{metric}"]
        assert metrics[f"demo_benign/{variant}/n"] == 6
    assert not any(k.startswith("math/") for k in metrics)


def test_unavailable_benchmark_is_reported(project: Path) -> None:
    results = json.loads((project / "reports/eval/results.json").read_text())
    assert results["tasks"]["math"]["available"] is False
    assert "hub" in results["tasks"]["math"]["unavailable"]
    assert results["task_order"] == ["demo_benign", "demo_harmful", "demo_mc", "demo_math", "math"]
    report = (project / "reports/report.md").read_text()
    assert "NOT AVAILABLE" in report and "| math |" in report


def test_responses_are_stored_with_variant_and_judge(project: Path) -> None:
    from eds.records import read_parquet_rows

    for variant in VARIANTS:
        rows = read_parquet_rows(project / f"data/eval/responses/{variant}/demo_harmful.parquet")
        assert len(rows) == 4 and {r["variant"] for r in rows} == {variant}
        assert {(r["judge"], r["judge_version"]) for r in rows} == {("keyword", "1")}
        mc = read_parquet_rows(project / f"data/eval/responses/{variant}/demo_mc.parquet")
        assert len(json.loads(mc[0]["logliks"])) == len(json.loads(mc[0]["choices"]))


def test_rerun_resumes_and_rejudges_without_generating(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.evaluate as evaluate
    from eds.records import atomic_write_parquet, read_parquet_rows
    from pipelines.registry import run_stage

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored (variant, task) pair was regenerated")

    monkeypatch.setattr(evaluate, "run_task", no_generation)
    before = json.loads((project / "reports/metrics.json").read_text())
    path = project / "data/eval/responses/eds/demo_benign.parquet"
    rows = read_parquet_rows(path)
    atomic_write_parquet(path, [{**r, "judge_version": "0", "refused": not r["refused"]} for r in rows])
    run_stage("evaluate")
    rejudged = read_parquet_rows(path)
    assert {r["judge_version"] for r in rejudged} == {"1"}
    assert [r["refused"] for r in rejudged] == [r["refused"] for r in rows]
    assert json.loads((project / "reports/metrics.json").read_text()) == before


def test_training_prompt_leak_fails_the_stage(project: Path, tiny_model_dir: Path) -> None:
    from eds.datasets import load
    from eds.splits import SplitLeakError, write_exclusions
    from pipelines.registry import run_stage

    leaked = [i for i in load("demo_eval") if i.prompt_type == "harmful"][:50]
    write_exclusions(project / "leak.json", leaked)
    write_tiny_params(project, tiny_model_dir, {"splits": {"exclude": ["leak.json"]}})
    try:
        with pytest.raises(SplitLeakError, match="task demo_harmful"):
            run_stage("evaluate")
    finally:
        write_tiny_params(project, tiny_model_dir)


def test_sweep_is_nested_mlflow_runs(project: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'evaluate'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["variant"] for r in children) == sorted(VARIANTS)
    sweep = next(r for r in children if r.data.tags["variant"] == "eds_eta2_s2")
    assert sweep.data.tags["eta"] == "2.0" and sweep.data.tags["steps"] == "2"
    assert "demo_benign/compliance" in sweep.data.metrics and "demo_benign/delta_vs_none" in sweep.data.metrics


def test_report_files_and_benign_only_samples(project: Path) -> None:
    from eds.datasets import load

    html = (project / "reports/report.html").read_text()
    md = (project / "reports/report.md").read_text()
    for name in ("pareto", "tasks", "generalisation"):
        assert (project / f"reports/plots/{name}.png").stat().st_size > 1000
        assert f'src="plots/{name}.png"' in html and f"(plots/{name}.png)" in md
    assert "<table" in html and 'id="verdict"' in html
    results = json.loads((project / "reports/eval/results.json").read_text())
    assert results["verdicts"][0]["sentence"] in md.replace("**", "")
    harmful = [i.prompt for i in load("demo_eval") if i.prompt_type == "harmful"]
    samples = md.split("## Sample responses")[1].split("## Parameters")[0]
    assert samples.count("— ") >= 1
    assert not any(prompt in samples for prompt in harmful)
    gen = json.loads((project / "reports/eval/generalisation.json").read_text())
    assert {c["target"] for c in gen["cells"]} >= {"demo_eval"}
