"""Prefect orchestration: the whole pipeline as a flow, each stage a task driven through DVC.

A task runs ``dvc repro --single-item <stage>`` in the workspace, so the same stage code runs
as under ``dvc repro`` and DVC's lock and cache stay consistent (an unchanged stage is skipped
by DVC, not re-run). The stage's output is streamed line by line into the Prefect logger, so
it shows in the UI. Transient failures are retried; a params error is not.

Run it: ``python -m pipelines.flow`` (an ephemeral Prefect server is started if none is set
via ``PREFECT_API_URL``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task

from pipelines.registry import STAGES

PARAMS_ERROR_EXIT = 2  # `python -m pipelines` exits 2 on invalid params: retrying cannot help


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, tail: str) -> None:
        super().__init__(f"stage {stage!r} failed with exit code {code}:\n{tail}")
        self.stage = stage
        self.code = code


def _dvc_executable() -> str:
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's callback signature)
    try:
        state.result()
    except StageFailed as err:
        return err.code != PARAMS_ERROR_EXIT and "invalid params" not in str(err)
    except Exception:  # noqa: BLE001 - anything else (OSError, DVC lock contention) is worth a retry
        return True
    return False


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_transient)
def dvc_stage(stage: str, workspace: str) -> str:
    """Reproduce one DVC stage (only that stage) and stream its log into Prefect."""
    logger = get_run_logger()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [_dvc_executable(), "repro", "--single-item", stage]
    logger.info("running %s in %s", " ".join(cmd), workspace)
    proc = subprocess.Popen(
        cmd, cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and "\r" not in line:  # progress bars redraw with \r: keep the log readable
            logger.info(line)
        lines.append(line)
    code = proc.wait()
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
