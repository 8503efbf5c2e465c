"""Serve the pipeline's Prefect deployments: a cron-scheduled run, and on-demand variants.

``make serve`` runs ``python -m pipelines.serve`` against the server ``make prefect-server``
started (``PREFECT_API_URL=http://127.0.0.1:4200/api``). It registers two deployments and
then runs whatever the server schedules for them, one flow run at a time:

* ``eds-pipeline/eds-scheduled``: the whole pipeline (:func:`pipelines.flow.eds_pipeline`) on
  a cron schedule (default ``0 3 * * *``, every night at 03:00; ``--cron`` or ``$EDS_CRON``).
  DVC skips what did not change, so a scheduled run is cheap when nothing moved.
* ``eds-variants/eds-variants``: :func:`pipelines.variants.eds_variants`, no schedule; start it
  from the UI ("Run" > "Custom run") or ``prefect deployment run`` with a variants list.

Stopping it (Ctrl-C) pauses the schedule, as Prefect's runner does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from pipelines.flow import eds_pipeline
from pipelines.variants import eds_variants

DEFAULT_CRON = "0 3 * * *"
PIPELINE_DEPLOYMENT = "eds-scheduled"
VARIANTS_DEPLOYMENT = "eds-variants"


def deployments(
    workspace: str | Path = ".",
    cron: str = DEFAULT_CRON,
    stages: Sequence[str] | None = None,
    name: str = PIPELINE_DEPLOYMENT,
    timezone: str | None = None,
) -> list[RunnerDeployment]:
    """The scheduled pipeline deployment and the on-demand variants deployment."""
    root = str(Path(workspace).resolve())
    scheduled = eds_pipeline.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone or "UTC"),
        parameters={"stages": list(stages) if stages else None, "workspace": root},
        description=f"The EDS pipeline (dvc repro per stage) in {root}, on cron {cron!r}.",
        tags=["eds", "scheduled"],
    )
    variants = eds_variants.to_deployment(
        name=VARIANTS_DEPLOYMENT,
        parameters={"variants": [], "workspace": root, "targets": None},
        description=f"DVC experiments in {root}: variants = [{{dotted.key: value}}, ...].",
        tags=["eds", "variants"],
    )
    return [scheduled, variants]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="stages of the scheduled run (default: all)")
    parser.add_argument("--workspace", default=".", help="the DVC workspace (default: .)")
    parser.add_argument("--cron", default=os.environ.get("EDS_CRON", DEFAULT_CRON), help="cron schedule")
    parser.add_argument("--timezone", default=None, help="IANA timezone of the cron (default: UTC)")
    parser.add_argument("--name", default=PIPELINE_DEPLOYMENT, help="name of the scheduled deployment")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("warning: PREFECT_API_URL is not set: serving against a temporary server (no UI)", file=sys.stderr)
    serve(*deployments(args.workspace, args.cron, args.stages or None, args.name, args.timezone), limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
