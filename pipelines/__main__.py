"""Command line: ``python -m pipelines <stage> [--params params.yaml]`` (what dvc.yaml runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from eds.config import ConfigError
from pipelines.registry import STAGES, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="Run one EDS pipeline stage.")
    parser.add_argument("stage", choices=[*STAGES, "list"], help="stage to run, or 'list'")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.stage == "list":
        for stage in STAGES.values():
            print(f"{stage.name:10s} {stage.description}")
        return 0
    try:
        summary = run_stage(args.stage, args.params)
    except ConfigError as err:
        print(f"error: invalid params\n{err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
