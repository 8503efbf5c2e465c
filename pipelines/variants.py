"""Variants: one ``dvc exp run -S key=value ...`` per variant, as a Prefect flow.

A variant is a mapping of dotted params keys to values, e.g. ``{"steer.eta": 0.5,
"steer.layers": [10, 12]}`` or ``{"model.id": "meta-llama/Llama-3.1-8B-Instruct"}``;
:func:`grid` builds the cartesian product of value lists. Each variant:

* starts from the params the sweep started with (the params files are restored first, so
  the variants of a heterogeneous list do not inherit each other's overrides);
* runs ``dvc exp run [targets] -S key=value ...`` under the workspace lock (never two DVC runs
  at once in one workspace), its log streamed into Prefect;
* tags its MLflow runs through ``$EDS_RUN_TAGS``: ``variant`` (the overrides as one label),
  ``override.<key>`` per override, ``sweep`` and ``prefect_flow_run_id``. ``eds.tracking``
  also tags ``eta``/``steps``/``layers`` from the params, so the MLflow compare view lines
  variants up by tag or by param.

As with ``dvc exp run``, the workspace is left holding the last variant's params and results;
``dvc exp show`` lists them all, ``dvc exp apply <name>`` brings one back.

CLI: ``python -m pipelines.variants --grid 'generate.max_new_tokens=[16, 32]' [targets...]``
or ``--variant '{steer.eta: 0.5, steer.steps: 2}'`` (repeatable; values are YAML).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from eds.records import atomic_write_bytes
from pipelines.flow import StageFailed, _dvc_executable, retry_transient, run_streamed

DEFAULT_PARAMS_FILE = "params.yaml"
_RAN = re.compile(r"Ran experiment\(s\):\s*(\S+)")


def dvc_value(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it (YAML): lists and mappings in flow style."""
    if isinstance(value, str):
        return value
    return json.dumps(value)  # JSON is YAML: true/false, null, numbers, [..], {..}


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={dvc_value(value)}"]
    return args


def label(overrides: Mapping[str, Any]) -> str:
    """A stable one-line name for a variant, e.g. ``generate.max_new_tokens=4,steer.eta=0.5``."""
    return ",".join(f"{key}={dvc_value(overrides[key])}" for key in sorted(overrides)) or "base"


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``{key: [values]}``, in key order then value order."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(axes[k]) for k in keys))]


def params_files(overrides: Mapping[str, Any]) -> set[str]:
    """The params files a variant writes: ``file.yaml:key`` names one, a plain key params.yaml."""
    return {key.split(":", 1)[0] if ":" in key else DEFAULT_PARAMS_FILE for key in overrides}


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def dvc_experiment(
    overrides: dict[str, Any], workspace: str, targets: list[str], tags: dict[str, str], base: dict[str, str]
) -> dict[str, Any]:
    """Restore the base params files, then ``dvc exp run`` one variant; returns its experiment name."""
    logger = get_run_logger()
    root = Path(workspace)
    for name, text in base.items():  # atomic: a kill here must not leave a torn params file
        atomic_write_bytes(root / name, text.encode("utf-8"))
    cmd = [_dvc_executable(), "exp", "run", *targets, *override_args(overrides)]
    code, lines = run_streamed(cmd, workspace, logger, {"EDS_RUN_TAGS": json.dumps(tags)})
    if code != 0:
        raise StageFailed(f"exp run {label(overrides)}", code, "\n".join(lines[-30:]))
    names = [m.group(1) for line in lines if (m := _RAN.search(line))]
    return {"variant": tags["variant"], "experiment": names[-1] if names else None, "overrides": overrides}


@flow(name="eds-variants", log_prints=True)
def eds_variants(
    variants: list[dict[str, Any]], workspace: str = ".", targets: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run each variant (a ``{dotted.key: value}`` mapping) as a DVC experiment, one after another."""
    if not variants:
        raise ValueError("no variants given")
    root = Path(workspace).resolve()
    files = set().union(*(params_files(v) for v in variants))
    missing = sorted(f for f in files if not (root / f).is_file())
    if missing:
        raise FileNotFoundError(f"params files not in {root}: {missing}")
    base = {name: (root / name).read_text(encoding="utf-8") for name in sorted(files)}
    sweep = f"{flow_run.get_flow_name() or 'eds-variants'}/{flow_run.get_name() or 'local'}"
    results = []
    for overrides in variants:
        name = label(overrides)
        tags = {
            "variant": name,
            "sweep": sweep,
            "prefect_flow_run_id": str(flow_run.get_id() or ""),
            **{f"override.{key}": dvc_value(value) for key, value in overrides.items()},
        }
        run = dvc_experiment.with_options(name=f"dvc exp run {name}")
        results.append(run(dict(overrides), str(root), list(targets or []), tags, base))
    return results


def _parse_grid(spec: str) -> tuple[str, list[Any]]:
    key, sep, values = spec.partition("=")
    parsed = yaml.safe_load(values) if sep else None
    if not sep or not key or not isinstance(parsed, list) or not parsed:
        raise argparse.ArgumentTypeError(f"--grid wants key=[v1, v2, ...], got {spec!r}")
    return key.strip(), parsed


def _parse_variant(spec: str) -> dict[str, Any]:
    parsed = yaml.safe_load(spec)
    if not isinstance(parsed, dict) or not parsed:
        raise argparse.ArgumentTypeError(f"--variant wants a mapping such as '{{steer.eta: 0.5}}', got {spec!r}")
    return {str(k): v for k, v in parsed.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.variants", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="stages to reproduce (default: the whole pipeline)")
    parser.add_argument("--grid", action="append", type=_parse_grid, default=[], metavar="KEY=[V1,V2]")
    parser.add_argument("--variant", action="append", type=_parse_variant, default=[], metavar="'{KEY: V}'")
    parser.add_argument("--workspace", default=".", help="the DVC workspace (default: .)")
    args = parser.parse_args(argv)
    variants = list(args.variant) + (grid(dict(args.grid)) if args.grid else [])
    if not variants:
        parser.error("give --grid and/or --variant")
    for result in eds_variants(variants, args.workspace, args.targets or None):
        print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
