"""Shared fixtures: the embedded model, a tiny random Llama with the embedded tokenizer, and
throwaway DVC workspaces that hold a copy of the project's tracked files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import eds  # noqa: F401  (applies the offline switches before anything else loads)
from eds.models import LoadedModel, embedded_folder

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDS_DATA_ROOT") or REPO.parent / "shared" / "benchmarks").resolve()
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded model's cached HF folder (converted from its GGUF on first use)."""
    return embedded_folder("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A 2-layer random Llama (hidden 32) with the embedded model's tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    """The tiny random Llama loaded on the CPU (one per test module: tests may attach hooks)."""
    from eds.config import ModelConfig
    from eds.models import load_model

    return load_model(ModelConfig(id=str(tiny_model_dir), device="cpu"))


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    files = [line for line in out.stdout.splitlines() if line]
    outputs = ("tests/", "data/", "reports/", "dvc.lock", "models/ebm/", "models/selection.json")  # DVC outputs
    return [f for f in files if (REPO / f).is_file() and not f.startswith(outputs)]


def write_params(folder: Path, *overrides: dict[str, Any]) -> Path:
    """``folder``/params.yaml: the repo's params.yaml deep-merged with each of ``overrides`` in turn."""
    from eds.config import deep_merge

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for layer in overrides:
        raw = deep_merge(raw, layer)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return folder


SMALL_RUN: dict[str, Any] = {
    # The plain embedded model: with the cautious testbed adapter (the default since the testbed
    # landed) 12 prompts may hold no bad (false refusal / jailbreak) example, and the EBM stages
    # need both classes in the train and val splits.
    "model": {"adapter": None},
    "data": {"root": str(SHARED), "train": [{"name": "demo_train", "limit": 12}]},
    "splits": {"val_fraction": 0.34},
    "generate": {"batch_size": 4, "max_new_tokens": 8, "shard_size": 4},
    "extract": {"batch_size": 4, "shard_size": 4},
    "train": {"widths": [32, 16], "epochs": 3, "batch_size": 4},
    "select": {"k": 2},
    # A few items per task, 4 new tokens, one EDS point: the evaluate and report stages in seconds.
    "evaluate": {
        "tasks": [{"name": "demo_benign", "limit": 4}, {"name": "demo_harmful", "limit": 4},
                  {"name": "demo_mc", "limit": 2}, {"name": "demo_math", "limit": 1}],
        "sweep": {"eta": []},
        "max_new_tokens": 4,
        "math_max_new_tokens": 4,
        "bootstrap_samples": 200,
        "generalisation": {"epochs": 1},
    },
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A git + DVC workspace with the project's files and small demo params (12 prompts, 8 tokens,
    tiny EBMs)."""
    ws = tmp_path / "ws"
    for rel in tracked_files():
        target = ws / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    write_params(ws, SMALL_RUN)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=ws, check=True)
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "ws"], cwd=ws, check=True)
    return ws


def run_in(ws: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv (python, dvc) in a workspace, with the venv on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PREFECT_HOME": str(ws / ".prefect")}
    exe = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    proc = subprocess.run([exe, *args[1:]], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
