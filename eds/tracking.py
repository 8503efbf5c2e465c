"""MLflow tracking: one experiment per pipeline config, one run per stage invocation.

Runs carry the flattened params, the stage's metrics and tags that line variants up in the
MLflow compare view: stage, profile, model, git SHA (and whether the tree was dirty), the
hash of ``dvc.lock``, the steering settings ``eta``/``steps``/``layers`` when the params have
them, and any tags an orchestrator passes as a JSON object in ``$EDS_RUN_TAGS`` (the Prefect
variants flow sets ``variant``, ``override.<key>``, ``sweep`` and the flow run id there). The
default store is ``sqlite:///mlflow.db`` in the repository.
Secrets never reach MLflow: keys that look like tokens or passwords, and values that look like
a Hugging Face or API token, are dropped from params and tags (``$EDS_RUN_TAGS`` included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eds.config import Params

# A key whose last part names a secret ("hub_token", "api_key"), not "max_new_tokens".
_SECRET_KEY = re.compile(r"(^|[._-])(token|secret|password|passwd|api[_-]?key|credentials?)$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})$")
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000
RUN_TAGS_ENV = "EDS_RUN_TAGS"
# Tags named after steering params (steer.eta -> eta), from whichever section the params have.
STEERING_TAGS = ("eta", "steps", "layers")
STEERING_SECTIONS = ("steer", "steering")

log = logging.getLogger(__name__)


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


def _tag_value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:MAX_TAG_CHARS]


def steering_tags(dump: Mapping[str, Any]) -> dict[str, str]:
    """``eta``, ``steps`` and ``layers`` tags from a params dump that has a steering section.

    Reads ``steer.<name>`` (or ``steering.<name>``); absent or null values give no tag, so
    stages that run before steering exists are tagged as before.
    """
    tags: dict[str, str] = {}
    for section in STEERING_SECTIONS:
        values = dump.get(section)
        if not isinstance(values, Mapping):
            continue
        for name in STEERING_TAGS:
            if name not in tags and values.get(name) is not None:
                tags[name] = _tag_value(values[name])
    return tags


def env_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Extra tags from ``$EDS_RUN_TAGS`` (a JSON object); a malformed value is ignored with a warning."""
    raw = (os.environ if environ is None else environ).get(RUN_TAGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):  # its text is not logged: it may hold a secret
        log.warning("ignoring %s: not a JSON object (%d characters)", RUN_TAGS_ENV, len(raw))
        return {}
    return {str(k): _tag_value(v) for k, v in parsed.items() if v is not None}


def run_tags(params: Params, stage: str, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags of a stage run; steering, ``$EDS_RUN_TAGS`` and ``extra`` tags add to (and may override) the base."""
    tags = {
        "stage": stage,
        "profile": params.profile,
        "model": params.model.id,
        "adapter": params.model.adapter or "",
        "git_sha": git_sha(),
        "dvc_lock": dvc_lock_hash(),
    }
    tags.update(steering_tags(params.model_dump(mode="json")))
    tags.update(env_tags())
    tags.update({str(k): _tag_value(v) for k, v in (extra or {}).items() if v is not None})
    return {k: v[:MAX_TAG_CHARS] for k, v in redact(tags).items()}  # tags get the params' secret filter too


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

    def log_history(self, history: Sequence[tuple[int, Mapping[str, float]]], chunk: int = 1000) -> None:
        """Log many ``(step, metrics)`` points in few batched calls (one call per step is slow)."""
        if self.run_id is None:
            return
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(_metric_key(k), float(v), now, int(step)) for step, metrics in history for k, v in metrics.items()]
        client = MlflowClient()
        for start in range(0, len(points), chunk):
            client.log_batch(self.run_id, metrics=points[start : start + chunk])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.set_tags(dict(tags))


def _metric_key(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)


def resolve_uri(uri: str) -> str:
    """A relative ``sqlite:///x.db`` URI made absolute against the current directory.

    MLflow caches one store per URI string (``lru_cache`` in its store registry), so a relative
    sqlite URI keeps writing to the database of the first directory it was used in; stages run
    in-process in several project folders (tests, notebooks) then log to the wrong file.
    """
    prefix = "sqlite:///"
    path = uri[len(prefix) :] if uri.startswith(prefix) else ""
    if path and path != ":memory:" and not Path(path).is_absolute():
        return prefix + str(Path(path).resolve())
    return uri


@contextmanager
def stage_run(params: Params, stage: str, extra_tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """Open an MLflow run named after the stage, with params and tags (plus ``extra_tags``) logged."""
    if not params.tracking.enabled:
        yield StageRun(None)
        return
    import mlflow

    mlflow.set_tracking_uri(resolve_uri(params.tracking.uri))
    mlflow.set_experiment(params.experiment_name)
    with mlflow.start_run(run_name=stage, tags=run_tags(params, stage, extra_tags)) as run:
        mlflow.log_params(loggable_params(params))
        yield StageRun(run.info.run_id)
