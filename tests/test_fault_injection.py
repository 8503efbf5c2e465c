"""Fault injection: ``kill -9`` during generate, extract, train and evaluate.

A reference workspace (the project's files, conftest's ``SMALL_RUN`` on the tiny random Llama)
runs every stage once, uninterrupted, as ``python -m pipelines <stage>`` subprocesses. For each
stage under test a copy of it loses that stage's outputs, the stage is started and SIGKILLed
partway (polling for its first output file, or for training to start), a torn temporary file is
planted where a kill mid-write would leave one, and the stage is rerun to completion. Every file
of the stage's DVC outputs (``outs``, ``metrics`` and ``plots`` of ``dvc.yaml``) must then have
the same sha256 as in the reference: no field is excluded, because none of these artifacts holds
a wall-clock time (durations go to MLflow and the log only).

A static test checks that every file write in ``eds/`` and ``pipelines/`` goes through the
atomic helpers of ``eds/records.py`` (or an allowlisted exception, with its reason).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import BIN, REPO, SMALL_RUN, run_in, tracked_files, write_params
from reliability_helpers import tree_hashes
from static_scan import all_call_sites, call_sites_in, write_kind

pytestmark = pytest.mark.integration

STAGES = ("split", "generate", "classify", "extract", "train", "select", "evaluate")
TRAIN_EPOCHS = 400  # a few seconds of training, so that the kill lands while it runs


def fault_params(model_dir: Path) -> dict[str, Any]:
    from eds.config import deep_merge

    return deep_merge(SMALL_RUN, {
        "model": {"id": str(model_dir), "adapter": None},
        "tracking": {"enabled": False},
        # Shards of 2 prompts: 6 per stage, so a kill after the first still lands partway on a fast machine.
        "generate": {"shard_size": 2},
        "extract": {"shard_size": 2},
        "train": {"epochs": TRAIN_EPOCHS, "patience": None},
        # Layer 0's input at the last prompt token is the same embedding for every prompt: no direction there.
        "evaluate": {"ablation_layer": 1, "generalisation": {"layer": 1}},
    })  # fmt: skip


def stage_outputs(stage: str) -> list[str]:
    """Every path ``dvc.yaml`` declares as an output of ``stage`` (outs, metrics, plots)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    paths = []
    for kind in ("outs", "metrics", "plots"):
        paths += [next(iter(entry)) if isinstance(entry, dict) else entry for entry in spec.get(kind, [])]
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A workspace where every stage up to evaluate ran once, uninterrupted."""
    ws = tmp_path_factory.mktemp("fault") / "reference"
    for rel in tracked_files():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ws / rel)
    write_params(ws, fault_params(tiny_model_dir))
    for stage in STAGES:
        run_in(ws, "python", "-m", "pipelines", stage)
    return ws


def _file_exists(pattern: str) -> Callable[[Path, str], bool]:
    return lambda ws, _log: any(ws.glob(pattern))


KILL_WHEN: dict[str, Callable[[Path, str], bool]] = {
    "generate": _file_exists("data/responses/shard-00000.parquet"),
    "extract": _file_exists("data/activations/shard-00000.h5"),
    "train": lambda _ws, log: "train: 2 layers" in log,  # logged just before the epochs start
    "evaluate": _file_exists("data/eval/responses/*/*.parquet"),
}
# Where a kill in the middle of a write leaves its temporary file (eds.records names them ``.<name>.<random>.tmp``).
TORN = {
    "generate": "data/responses/.shard-00002.parquet.k1ll3d.tmp",
    "extract": "data/activations/.shard-00002.h5.k1ll3d.tmp",
    "train": "models/.ebm.k1ll3d.tmp/layer_00.safetensors",
    "evaluate": "data/eval/responses/none/.demo_mc.parquet.k1ll3d.tmp",
}


def kill_partway(ws: Path, stage: str, timeout: float = 300) -> str:
    """Start the stage, SIGKILL it once its trigger holds; returns its log. Fails if it finished first."""
    log_path = ws / f"{stage}.log"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "python"), "-m", "pipelines", stage], cwd=ws, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if KILL_WHEN[stage](ws, log_path.read_text(encoding="utf-8", errors="replace")):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        code = proc.wait()
    text = log_path.read_text(encoding="utf-8", errors="replace")
    log_path.unlink()
    assert code == -signal.SIGKILL, f"{stage} was not killed partway (exit {code}):\n{text[-3000:]}"
    return text


def interrupted_state(ws: Path, stage: str) -> None:
    """What a kill leaves: never an output that looks complete."""
    if stage in ("generate", "extract"):
        folder = ws / ("data/responses" if stage == "generate" else "data/activations")
        assert json.loads((folder / "manifest.json").read_text())["complete"] is False
    elif stage == "train":
        assert not (ws / "models/ebm").exists() and not (ws / "reports/metrics/train.json").exists()
    else:
        assert not (ws / "reports/metrics.json").exists() and not (ws / "reports/eval").exists()


@pytest.mark.parametrize("stage", ["generate", "extract", "train", "evaluate"])
def test_kill_then_rerun_gives_identical_artifacts(stage: str, reference: Path, tmp_path: Path) -> None:
    outputs = stage_outputs(stage)
    expected = tree_hashes(reference, outputs)
    assert expected and all(not name.endswith(".tmp") for name in expected)

    ws = tmp_path / "ws"
    shutil.copytree(reference, ws)
    for out in outputs:
        path = ws / out
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    kill_partway(ws, stage)
    interrupted_state(ws, stage)
    torn = ws / TORN[stage]
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"torn by kill -9")

    run_in(ws, "python", "-m", "pipelines", stage)
    assert tree_hashes(ws, outputs) == expected
    assert not torn.exists()


def test_outputs_hold_no_wall_clock_time(reference: Path) -> None:
    """The artifacts DVC hashes are free of volatile fields (durations stay in MLflow and the log)."""
    for stage in ("train", "evaluate"):
        for name in tree_hashes(reference, stage_outputs(stage)):
            if name.endswith(".json"):
                text = (reference / name).read_text(encoding="utf-8")
                assert '"seconds"' not in text and '"written"' not in text, name


# ------------------------------------------------------------------------------ every write is atomic

# Writes that do not go through eds/records.py's helpers, and why that is safe.
ALLOWED_WRITES: dict[tuple[str, str, str], str] = {
    ("eds/models.py", "convert_gguf", "save_pretrained"): "writes into a private mkdtemp folder that os.replace "
    "moves into place whole (a kill leaves no converted model)",
    ("eds/models.py", "convert_gguf", "write_text"): "the same private folder's marker file",
    ("pipelines/servers.py", "launch", "open('wb')"): "a server's log stream, not an artifact",
}


def test_every_write_goes_through_the_atomic_helpers() -> None:
    offenders, used = [], set()
    for site in all_call_sites():
        kind = write_kind(site)
        if kind is None or site.path == "eds/records.py" or site.atomic or site.memory:
            continue  # the helpers themselves, a temp path of atomic_output/atomic_dir, an in-memory buffer
        key = (site.path, site.function, kind)
        if key in ALLOWED_WRITES:
            used.add(key)
        else:
            offenders.append(f"{site.where}: {site.name} ({kind})")
    assert not offenders, "non-atomic writes (use eds.records.atomic_* helpers):\n" + "\n".join(offenders)
    assert used == set(ALLOWED_WRITES), f"stale allowlist entries: {set(ALLOWED_WRITES) - used}"


def test_the_scan_sees_raw_writes() -> None:
    """The scan is not vacuous: each write pattern is found in a sample, reads and buffers are not."""
    sample = (
        "Path('x').write_text('a')\nopen(p, 'w')\nopen(p)\nnp.save(f, a)\nh5py.File(p, 'a')\nh5py.File(p, 'r')\n"
        "json.dump(o, fh)\nyaml.safe_dump(o)\ndef f():\n    buf = io.BytesIO()\n    np.save(buf, a)\n"
        "with atomic_output(p) as tmp, h5py.File(tmp, 'w') as h:\n    pass\n"
    )
    found = [(site.line, kind, site.memory, site.atomic) for site in call_sites_in(sample) if (kind := write_kind(site))]
    assert found == [(1, "write_text", False, False), (2, "open('w')", False, False), (4, "np.save", False, False),
                     (5, "h5py.File('a')", False, False), (7, "json.dump", False, False), (11, "np.save", True, False),
                     (12, "h5py.File('w')", False, True)]  # fmt: skip
