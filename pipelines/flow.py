"""Prefect orchestration: the whole pipeline as a flow, each stage a task driven through DVC.

A task runs ``dvc repro --single-item <stage>`` in the workspace, so the same stage code runs
as under ``dvc repro`` and DVC's lock and cache stay consistent (an unchanged stage is skipped
by DVC, not re-run). The stage's output is streamed line by line into the Prefect logger, so
it shows in the UI. Transient failures are retried; a params error is not.

``eds_variants`` (module :mod:`pipelines.variants`) runs ``dvc exp run -S key=value ...`` once
per variant. Every DVC command of every flow holds the workspace's file lock
(``.dvc/tmp/eds-orchestration.lock``), so two flow runs never drive DVC at once in one
workspace: the second waits.

Run it: ``python -m pipelines.flow [stages...]`` (an ephemeral Prefect server is started if none
is set via ``PREFECT_API_URL``; ``make flow`` uses the one ``make prefect-server`` started).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task

from pipelines.registry import STAGES

PARAMS_ERROR_EXIT = 2  # `python -m pipelines` exits 2 on invalid params: retrying cannot help
LOCK_NAME = "eds-orchestration.lock"
LOCK_TIMEOUT_ENV = "EDS_WORKSPACE_LOCK_TIMEOUT"  # seconds to wait for the workspace (default: forever)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, tail: str) -> None:
        super().__init__(f"stage {stage!r} failed with exit code {code}:\n{tail}")
        self.stage = stage
        self.code = code


def _dvc_executable() -> str:
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


def lock_path(workspace: str | Path) -> Path:
    """The workspace's orchestration lock: inside DVC's own tmp folder (gitignored by DVC)."""
    root = Path(workspace).resolve()
    folder = root / ".dvc" / "tmp" if (root / ".dvc").is_dir() else root
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOCK_NAME


@contextmanager
def workspace_lock(workspace: str | Path, logger: Any = None) -> Iterator[None]:
    """Hold the workspace's lock; waits (logging once) while another flow run holds it."""
    timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "-1"))
    lock = FileLock(str(lock_path(workspace)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if logger is not None:
            logger.info("workspace %s is busy (another DVC run holds %s); waiting", workspace, lock.lock_file)
        lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def run_streamed(cmd: Sequence[str], workspace: str, logger: Any, extra_env: Mapping[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``cmd`` in ``workspace`` under the workspace lock, logging each output line."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # tqdm reads TQDM_* defaults from the environment: a progress line every 10 s, not every redraw.
    env = {"TQDM_MININTERVAL": "10", **os.environ, "PATH": path, **(extra_env or {})}
    with workspace_lock(workspace, logger):
        logger.info("running %s in %s", " ".join(cmd), workspace)
        proc = subprocess.Popen(
            list(cmd), cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line and "\r" not in line:  # progress bars redraw with \r: keep the log readable
                logger.info(line)
            lines.append(line)
        return proc.wait(), lines


def retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's callback signature)
    """Retry anything but a params error (exit code 2 / "invalid params"): that cannot heal."""
    try:
        state.result()
    except StageFailed as err:
        return err.code != PARAMS_ERROR_EXIT and "invalid params" not in str(err)
    except Exception:  # noqa: BLE001 - anything else (OSError, DVC lock contention) is worth a retry
        return True
    return False


_retry_transient = retry_transient  # the name earlier code used


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def dvc_stage(stage: str, workspace: str) -> str:
    """Reproduce one DVC stage (only that stage) and stream its log into Prefect."""
    logger = get_run_logger()
    code, lines = run_streamed([_dvc_executable(), "repro", "--single-item", stage], workspace, logger)
    if code != 0:
        raise StageFailed(stage, code, "\n".join(lines[-30:]))
    skipped = any("didn't change, skipping" in line for line in lines)
    return "skipped (unchanged)" if skipped else "ran"


@flow(name="eds-pipeline", log_prints=True)
def eds_pipeline(stages: Sequence[str] | None = None, workspace: str = ".") -> dict[str, str]:
    """Run the pipeline stages in order (all registered stages by default)."""
    names = list(stages or STAGES)
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    root = str(Path(workspace).resolve())
    return {name: dvc_stage.with_options(name=f"dvc repro {name}")(name, root) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("--workspace", default=".", help="the DVC workspace (default: .)")
    args = parser.parse_args(argv)
    print(eds_pipeline(args.stages or None, args.workspace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
