"""Offline and no-telemetry switches, set before any third-party library reads them.

Each variable below was seen making a network attempt when left unset (see
``../shared/notes/toolchain.md``). Values already present in the environment win, so a user
with hub access can export ``HF_HUB_OFFLINE=0`` to download models and datasets by id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

OFFLINE_DEFAULTS: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set every offline switch that is not already set; return the ones this call set."""
    env = os.environ if environ is None else environ
    applied: dict[str, str] = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in env:
            env[key] = value
            applied[key] = value
    return applied


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return os.environ.get("HF_HUB_OFFLINE", "1").lower() in {"1", "true", "yes", "on"}


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op CPU threads, then restore (None: leave torch's setting).

    Small matmuls (EBMs, a 135M model at batch 32) on a busy 2-core machine were measured up to
    10x slower with two OpenMP threads than with one (spin-waiting), hence the params knobs.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
