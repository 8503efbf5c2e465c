"""MLflow tracking: one experiment per pipeline config, one run per stage invocation.

Runs carry the flattened params, the stage's metrics and tags that line variants up in the
MLflow compare view: stage, profile, model, git SHA (and whether the tree was dirty) and the
hash of ``dvc.lock``. The default store is ``sqlite:///mlflow.db`` in the repository.
Secrets never reach MLflow: keys that look like tokens or passwords are dropped from params.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eds.config import Params

# A key whose last part names a secret ("hub_token", "api_key"), not "max_new_tokens".
_SECRET_KEY = re.compile(r"(^|[._-])(token|secret|password|passwd|api[_-]?key|credentials?)$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})$")
MAX_PARAM_CHARS = 6000


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists become JSON strings."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix.rstrip(".")
    out[key] = json.dumps(obj, sort_keys=True) if isinstance(obj, (list, tuple)) else obj
    return out


def loggable_params(params: Params) -> dict[str, str]:
    return redact(flatten(params.model_dump(mode="json")))


def redact(flat: Mapping[str, Any]) -> dict[str, str]:
    """Params as strings, without secret-looking keys or token-looking values."""
    return {
        k: str(v)[:MAX_PARAM_CHARS]
        for k, v in flat.items()
        if not _SECRET_KEY.search(k) and not _SECRET_VALUE.match(str(v))
    }


def git_sha(cwd: str | Path = ".") -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_lock_hash(path: str | Path = "dvc.lock") -> str:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "none"


def run_tags(params: Params, stage: str) -> dict[str, str]:
    return {
        "stage": stage,
        "profile": params.profile,
        "model": params.model.id,
        "adapter": params.model.adapter or "",
        "git_sha": git_sha(),
        "dvc_lock": dvc_lock_hash(),
    }


class StageRun:
    """What a stage can log while its run is open (a no-op when tracking is disabled)."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run_id is None:
            return
        import mlflow

        clean = {_metric_key(k): float(v) for k, v in metrics.items()}
        mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.set_tags(dict(tags))


def _metric_key(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)


@contextmanager
def stage_run(params: Params, stage: str) -> Iterator[StageRun]:
    """Open an MLflow run named after the stage, with params and tags logged."""
    if not params.tracking.enabled:
        yield StageRun(None)
        return
    import mlflow

    mlflow.set_tracking_uri(params.tracking.uri)
    mlflow.set_experiment(params.experiment_name)
    with mlflow.start_run(run_name=stage, tags=run_tags(params, stage)) as run:
        mlflow.log_params(loggable_params(params))
        yield StageRun(run.info.run_id)
