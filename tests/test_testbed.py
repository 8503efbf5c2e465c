"""The testbed recipe (pipelines/testbed.py) end to end on the tiny random Llama with a handful of
prompts: training data without evaluation prompts, self-distillation, LoRA training, the saved
adapter loading as base + adapter, metrics and model card written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED
from eds.config import parse
from pipelines import testbed, testbed_data

TINY_RECIPE = {
    "seed": 0,
    "advbench": 6,
    "orb_toxic": 4,
    "alpaca": 8,
    "distill_max_new_tokens": 6,
    "lora": {"rank": 2, "alpha": 4, "epochs": 1.0, "batch_size": 4, "max_length": 48, "warmup_steps": 1},
    "eval": {"jbb": 4, "harmbench": 4, "orb_h": 4, "xstest_safe": 4, "alpaca_heldout": 4, "mmlu": 4,
             "max_new_tokens": 4, "batch_size": 4},
}  # fmt: skip


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared benchmark copies at {SHARED}")
def test_recipe_trains_saves_and_measures_without_eval_prompts(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {
        "model": {"id": str(tiny_model_dir), "adapter": None, "device": "cpu"},
        "data": {"root": str(SHARED)},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "testbed": TINY_RECIPE,
    }
    params = parse(raw, check_paths=False)
    monkeypatch.chdir(tmp_path)
    metrics = testbed.run(params, params.testbed)

    out = tmp_path / "models/testbed"
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for side in ("base", "tuned"):
        for key in testbed.TARGETS:
            assert 0.0 <= metrics[side][key] <= 1.0 and metrics[side][f"n_{key}"] == 4
        assert metrics[side]["n_mmlu_accuracy"] == 4
    assert metrics["data"]["harmful_train"]["n"] == 10 and metrics["data"]["benign_train"]["alpaca"] == 8
    assert metrics["training"]["steps"] == 5  # 18 examples, batch 4, one epoch
    card = (out / "README.md").read_text()
    assert "| jbb_refusal | 4 |" in card and "python -m pipelines.testbed" in card

    # Never trained on an evaluation prompt, and the trained prompts are listed for exclusion.
    trained = json.loads((out / "training_prompts.json").read_text())["text_keys"]
    assert len(trained["advbench"]) == 6 and len(trained["orb_toxic"]) == 4 and len(trained["alpaca"]) == 8
    banned = testbed_data.eval_keys(params)
    assert banned and not banned & {k for keys in trained.values() for k in keys}
    assert metrics["data"]["dropped_eval_overlap"]["advbench"] > 0  # JBB took behaviours from AdvBench

    # A rerun reuses the distillation and the base model's evaluation generations.
    cached = sorted(p.name for p in (tmp_path / "data/testbed").rglob("*.parquet"))
    assert "distill.parquet" in cached and any(p.parent.name == "base" for p in (tmp_path / "data/testbed/eval").rglob("*.parquet"))
