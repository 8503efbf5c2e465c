"""Scale-out: the shards of generate and extract spread over the workers of a Prefect task runner.

``eds_pipeline_scaleout`` is :func:`pipelines.flow.eds_pipeline` with one difference: before
``dvc repro --single-item <stage>`` of a sharded stage (:mod:`pipelines.shards`), it computes the
stage's pending shards as parallel tasks, each worker writing whole shards with the stage's own
code. The DVC stage then finds every shard done (both outputs are resumable), finishes its
manifest or index once, and DVC records the result in ``dvc.lock`` and the cache as usual.
Merged results are byte-identical to a single-process run: greedy decoding, the same shard
boundaries, the same batches.

Task runners (``--runner``):

* ``process`` (default, no extra dependency): ``ProcessPoolTaskRunner``, ``--workers`` local
  processes.
* ``dask`` (``pip install -e '.[scale]'``): ``DaskTaskRunner``; a local cluster of ``--workers``
  single-threaded worker processes on 127.0.0.1, or ``--address tcp://scheduler:8786``.
* ``ray`` (``pip install -e '.[ray]'``): ``RayTaskRunner`` on a running Ray cluster,
  ``--address ray://head:10001`` (or ``auto`` after ``ray start --head`` on this machine; no
  Ray is started implicitly, as a Ray node listens on every interface). ``--gpus-per-task 1``
  reserves a GPU per shard task (Ray sets ``CUDA_VISIBLE_DEVICES``); ``--gpus-per-task 2`` with
  ``model.device_map: auto`` spreads a big model over the two GPUs a task sees.

Workers need the workspace at the same path (a shared filesystem on a cluster): a task
changes into it, as DVC runs a stage from the workspace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import wait

from eds import config
from pipelines import shards
from pipelines.flow import dvc_stage
from pipelines.registry import STAGES

RUNNERS = ("process", "dask", "ray")
SHARDED_STAGES = tuple(shards.STAGES)


def _in_worker(workspace: str, params_file: str, threads: int) -> tuple[Path, config.Params]:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)  # N single-threaded workers on N cores, not N x N threads
    root = Path(workspace)
    os.chdir(root)  # relative paths in params are taken from the workspace, as under DVC
    return root, config.load(root / params_file)


@task(retries=1, retry_delay_seconds=2)
def prepare_shards(stage: str, workspace: str, params_file: str, threads: int = 1) -> dict[str, Any]:
    """Open the stage's output once, before any shard is written; its key and pending shards."""
    root, params = _in_worker(workspace, params_file, threads)
    key, pending, n_shards = shards.STAGES[stage].prepare(params, root)
    return {"key": key, "pending": pending, "n_shards": n_shards}


@task(retries=1, retry_delay_seconds=2)
def write_shard(stage: str, workspace: str, params_file: str, key: str, index: int, threads: int = 1) -> dict[str, Any]:
    """Compute and write one shard of ``stage`` (in a worker; the model stays loaded between shards)."""
    root, params = _in_worker(workspace, params_file, threads)
    rows = shards.STAGES[stage].write(params, root, key, index)
    return {"shard": index, "rows": rows, "pid": os.getpid()}


def task_runner(kind: str, workers: int, address: str | None = None) -> Any:
    """A Prefect task runner of ``kind`` with ``workers`` local workers (or a cluster's ``address``)."""
    if kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                   "host": "127.0.0.1", "dashboard_address": None}  # fmt: skip
        return DaskTaskRunner(cluster_kwargs=cluster)
    if kind == "ray":
        if not address:
            # A Ray started here listens on every interface (GCS, raylet, agents), whatever its
            # node IP: start it yourself where that is acceptable, and pass its address.
            raise ValueError("--runner ray needs --address (ray://head:10001, or 'auto' after `ray start --head`)")
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=address)
    raise ValueError(f"unknown runner {kind!r}; runners: {', '.join(RUNNERS)}")


@flow(name="eds-stage-shards")
def stage_shards(
    stage: str = "generate",
    workspace: str = ".",
    params_file: str = "params.yaml",
    threads_per_worker: int = 1,
    gpus_per_task: float = 0.0,
) -> dict[str, Any]:
    """Write every pending shard of ``stage`` in parallel on this flow's task runner (then the
    manifest, where that needs no model: generate's, the same bytes the stage writes)."""
    logger = get_run_logger()
    root = Path(workspace).resolve()
    os.chdir(root)
    sharded = shards.STAGES[stage]
    options = _gpu_options(gpus_per_task)
    with options():
        if sharded.prepare_loads_model:
            plan = prepare_shards.submit(stage, str(root), params_file, threads_per_worker).result()
        else:  # in this process: every worker then starts cold and takes shards alike
            key, pending, n_shards = sharded.prepare(config.load(root / params_file), root)
            plan = {"key": key, "pending": pending, "n_shards": n_shards}
        logger.info("%s: %d shards, %d to do", stage, plan["n_shards"], len(plan["pending"]))
        futures = [
            write_shard.with_options(name=f"{stage} shard {i}").submit(
                stage, str(root), params_file, plan["key"], i, threads_per_worker
            )
            for i in plan["pending"]
        ]
        wait(futures)
    done = [future.result() for future in futures]
    if sharded.finish is not None:
        sharded.finish(config.load(root / params_file), root)
    workers = sorted({result["pid"] for result in done})
    logger.info("%s: wrote %d shards on %d worker processes", stage, len(done), len(workers))
    return {"n_shards": plan["n_shards"], "written_shards": len(done), "worker_pids": workers}


def _gpu_options(gpus_per_task: float) -> Any:
    """Ray's per-task resource request (GPUs per shard task), or nothing."""
    if gpus_per_task <= 0:
        return contextlib.nullcontext
    from prefect_ray.context import remote_options

    return lambda: remote_options(num_gpus=gpus_per_task)


@flow(name="eds-pipeline-scaleout", log_prints=True)
def eds_pipeline_scaleout(
    stages: Sequence[str] | None = None,
    workspace: str = ".",
    runner: str = "process",
    workers: int = 2,
    address: str | None = None,
    gpus_per_task: float = 0.0,
    threads_per_worker: int = 1,
) -> dict[str, Any]:
    """The pipeline through DVC, with the sharded stages' shards computed on ``workers`` workers first."""
    names = list(stages or STAGES)
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    root = str(Path(workspace).resolve())
    results: dict[str, Any] = {}
    for name in names:
        if name in SHARDED_STAGES:
            sharded = stage_shards.with_options(task_runner=task_runner(runner, workers, address))
            results[f"{name} shards"] = sharded(name, root, "params.yaml", threads_per_worker, gpus_per_task)
        results[name] = dvc_stage.with_options(name=f"dvc repro {name}")(name, root)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.scaleout", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="stages to run through DVC (default: all)")
    parser.add_argument("--workspace", default=".", help="the DVC workspace (default: .)")
    parser.add_argument("--runner", choices=RUNNERS, default="process")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default: 2)")
    parser.add_argument("--address", default=None, help="a Dask scheduler or Ray cluster address")
    parser.add_argument("--gpus-per-task", type=float, default=0.0, help="Ray: GPUs reserved per shard task")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per worker (0: torch's default)")
    parser.add_argument("--shards-only", action="store_true", help="only write the shards of the given stages (no DVC)")
    args = parser.parse_args(argv)
    if args.shards_only:
        if set(args.stages) - set(SHARDED_STAGES):
            parser.error(f"--shards-only takes sharded stages only: {', '.join(SHARDED_STAGES)}")
        flow_ = stage_shards.with_options(task_runner=task_runner(args.runner, args.workers, args.address))
        result: Any = {
            stage: flow_(stage, args.workspace, "params.yaml", args.threads_per_worker, args.gpus_per_task)
            for stage in (args.stages or ["generate"])
        }
    else:
        result = eds_pipeline_scaleout(
            args.stages or None, args.workspace, args.runner, args.workers, args.address,
            args.gpus_per_task, args.threads_per_worker,
        )  # fmt: skip
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s: tasks must pickle by reference to workers.
    from pipelines.scaleout import main as _main

    sys.exit(_main())
