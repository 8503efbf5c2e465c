"""The local Prefect and MLflow servers: bound to 127.0.0.1, with their state inside the project.

``make prefect-server`` and ``make mlflow-ui`` run ``python -m pipelines.servers prefect|mlflow``,
which replaces itself with the server (Ctrl-C stops it). Tests start the very same command
lines in the background with :func:`start` and stop them with :meth:`RunningServer.stop`.

* Prefect: ``prefect server start --host 127.0.0.1 --port 4200``, state (sqlite, UI build) in
  ``$PREFECT_HOME`` (``.prefect/`` in the project), analytics off. UI at http://127.0.0.1:4200,
  API at http://127.0.0.1:4200/api.
* MLflow: ``mlflow server --host 127.0.0.1 --port 5000 --workers 1`` on the project's
  ``sqlite:///mlflow.db`` (the store the stages log to) with artifacts in ``mlartifacts/`` and
  the job runner off (2 processes, ~0.5 GB instead of 15 and ~3 GB). UI at http://127.0.0.1:5000.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from eds.env import OFFLINE_DEFAULTS

LOOPBACK = "127.0.0.1"
PREFECT_PORT = 4200
MLFLOW_PORT = 5000
HEALTH_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its command line, environment, and where it answers."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str  # what a browser opens
    health_url: str
    api_url: str = ""
    cwd: str | None = None

    def environ(self) -> dict[str, str]:
        return {**os.environ, **OFFLINE_DEFAULTS, **self.env}


@dataclass
class RunningServer:
    """A server started in its own process group; :meth:`stop` ends the whole group."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def api_url(self) -> str:
        return self.spec.api_url

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> "RunningServer":
        """Wait until the health URL answers 2xx; stops the server and raises if it never does."""
        deadline = time.monotonic() + timeout
        while not healthy(self.spec.health_url):
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with {code}" if code is not None else f"not healthy in {timeout:.0f} s"
                raise RuntimeError(f"{self.spec.name} server {why}; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # workers the leader left behind
        if self.process.poll() is None:
            self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _venv_exe(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def prefect_spec(
    home: str | Path, port: int = PREFECT_PORT, ui: bool = True, extra_env: Mapping[str, str] | None = None
) -> ServerSpec:
    """``prefect server start`` on 127.0.0.1 with ``PREFECT_HOME=home`` (its sqlite lives there)."""
    home = Path(home).resolve()
    base = f"http://{LOOPBACK}:{port}"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": LOOPBACK,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **(extra_env or {}),
    }
    argv = [_venv_exe("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port), "--analytics-off"]
    argv.append("--ui" if ui else "--no-ui")
    return ServerSpec("prefect", argv, env, url=base, health_url=f"{base}/api/health", api_url=f"{base}/api")


def mlflow_spec(
    store_uri: str = "sqlite:///mlflow.db",
    artifacts: str | Path = "mlartifacts",
    port: int = MLFLOW_PORT,
    cwd: str | Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> ServerSpec:
    """``mlflow server`` on 127.0.0.1, one worker, on ``store_uri`` (relative paths from ``cwd``)."""
    base = f"http://{LOOPBACK}:{port}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **(extra_env or {})}
    argv = [
        _venv_exe("mlflow"), "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--backend-store-uri", store_uri, "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    return ServerSpec(
        "mlflow", argv, env, url=base, health_url=f"{base}/health", api_url=base, cwd=None if cwd is None else str(cwd)
    )


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def launch(spec: ServerSpec, log_path: str | Path) -> RunningServer:
    """Start ``spec`` in the background, in its own process group; see :meth:`RunningServer.wait_healthy`."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed by RunningServer.stop
    process = subprocess.Popen(
        spec.argv, env=spec.environ(), cwd=spec.cwd, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return RunningServer(spec, process, log_path, log)


def start(spec: ServerSpec, log_path: str | Path, timeout: float = HEALTH_TIMEOUT_S) -> RunningServer:
    """Start ``spec`` in the background and wait until it is healthy."""
    return launch(spec, log_path).wait_healthy(timeout)


def _exec(spec: ServerSpec) -> int:
    print(f"{spec.name} UI: {spec.url}  (Ctrl-C stops it)", flush=True)
    if spec.cwd:
        os.chdir(spec.cwd)
    os.execvpe(spec.argv[0], spec.argv, spec.environ())
    return 1  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.servers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="server", required=True)
    pre = sub.add_parser("prefect", help="Prefect server + UI (state in $PREFECT_HOME, default .prefect/)")
    pre.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", PREFECT_PORT)))
    pre.add_argument("--home", default=os.environ.get("PREFECT_HOME", ".prefect"))
    mlf = sub.add_parser("mlflow", help="MLflow tracking server + UI on the project's store")
    mlf.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", MLFLOW_PORT)))
    mlf.add_argument("--store", default="sqlite:///mlflow.db", help="backend store URI (default: sqlite:///mlflow.db)")
    mlf.add_argument("--artifacts", default="mlartifacts", help="artifact folder (default: mlartifacts/)")
    args = parser.parse_args(argv)
    if args.server == "prefect":
        Path(args.home).mkdir(parents=True, exist_ok=True)
        return _exec(prefect_spec(args.home, args.port))
    return _exec(mlflow_spec(args.store, args.artifacts, args.port))


if __name__ == "__main__":
    sys.exit(main())
