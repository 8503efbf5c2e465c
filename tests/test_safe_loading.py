"""Safe loading: no pickle for our artifacts, ``torch.load`` only with ``weights_only=True``, no
``allow_pickle=True``, YAML only through ``safe_load``, ``trust_remote_code`` off by default,
servers on 127.0.0.1 only, and no token or secret in MLflow params, tags or stage logs.

The source checks are AST scans of ``eds/`` and ``pipelines/``; each scanner is also run on a
sample that holds the forbidden pattern, so a scan that matches nothing cannot pass vacuously.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO
from reliability_helpers import write_project
from static_scan import CallSite, all_call_sites, call_sites_in, constant, keyword, sources

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
FAKE_HF_TOKEN = "hf_" + "FAKEfake0123456789abcdefXYZ"
FAKE_API_KEY = "sk-" + "FAKEfake0123456789abcdefXYZ"


# ------------------------------------------------------------------------------ no pickle, safe loaders


def pickle_imports(tree: ast.AST, path: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [f"{path}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
    return found


def unsafe_loads(sites: list[CallSite]) -> list[str]:
    """Calls that can unpickle or run arbitrary code while loading."""
    bad = []
    for site in sites:
        tail = site.name.split(".")[-1]
        if site.name in {"torch.load"} and constant(keyword(site.node, "weights_only")) is not True:
            bad.append(f"{site.where}: torch.load without weights_only=True")
        if keyword(site.node, "allow_pickle") is not None and constant(keyword(site.node, "allow_pickle"), True) is not False:
            bad.append(f"{site.where}: {site.name}(allow_pickle=...) not False")
        if site.name in {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"}:
            bad.append(f"{site.where}: {site.name} (use yaml.safe_load)")
        if tail in {"read_pickle", "to_pickle"} or site.name.split(".")[0] in PICKLE_MODULES:
            bad.append(f"{site.where}: {site.name}")
        if site.name in {"eval", "exec"}:
            bad.append(f"{site.where}: builtin {site.name}")
    return bad


def test_no_pickle_and_only_safe_loaders_in_our_code() -> None:
    imports = [hit for path in sources() for hit in pickle_imports(ast.parse(path.read_text(encoding="utf-8")),
                                                                   str(path.relative_to(REPO)))]  # fmt: skip
    assert not imports, imports
    assert not unsafe_loads(all_call_sites())


def test_the_loader_scan_flags_each_unsafe_pattern() -> None:
    sample = (
        "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
        "np.load(p, allow_pickle=True)\nnp.load(p, allow_pickle=False)\nnp.load(p)\nyaml.load(t)\nyaml.safe_load(t)\n"
        "pd.read_pickle(p)\npickle.loads(b)\neval(s)\nmodel.eval()\n"
    )
    flagged = [hit.split(":")[1].split()[0] for hit in unsafe_loads(call_sites_in(sample))]
    assert flagged == ["1", "2", "4", "7", "9", "10", "11"]
    assert pickle_imports(ast.parse("import pickle\nfrom joblib import dump\nimport json\n"), "x") == [
        "x:1: import pickle", "x:2: import joblib"]


def test_our_artifacts_are_not_pickles(tmp_path: Path) -> None:
    """EBMs are safetensors + JSON; the loader reads them without unpickling (a pickle is rejected)."""
    import json

    import torch

    from eds.ebm import EBMLoadError, EBMSpec, EnergyMLP, load_ebm, save_ebm

    save_ebm(tmp_path / "layer_00", EnergyMLP(EBMSpec(4, (3,))), {"layer": 0})
    blob = (tmp_path / "layer_00.safetensors").read_bytes()  # safetensors: 8-byte length, then a JSON header
    assert json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["head.bias"]["dtype"] == "F32"
    assert load_ebm(tmp_path / "layer_00", hidden_size=4).metadata == {"layer": 0}
    torch.save(EnergyMLP(EBMSpec(4, (3,))).state_dict(), tmp_path / "layer_00.safetensors")  # a pickled state dict
    with pytest.raises(EBMLoadError, match="cannot read EBM weights"):
        load_ebm(tmp_path / "layer_00", hidden_size=4)


# ------------------------------------------------------------------------------ trust_remote_code


def test_trust_remote_code_is_off_by_default() -> None:
    import yaml

    from eds.config import ModelConfig, Params, parse

    assert ModelConfig().trust_remote_code is False and Params().model.trust_remote_code is False
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for profile in ("demo", *raw["profiles"]):
        assert parse({**raw, "profile": profile}, check_paths=False).model.trust_remote_code is False, profile
    for site in all_call_sites():
        value = keyword(site.node, "trust_remote_code")
        assert value is None or constant(value, "dynamic") is not True, f"{site.where}: trust_remote_code=True"
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code":
                        assert constant(default, "none") is False, f"{path}:{node.lineno}: {node.name} defaults it on"


# ------------------------------------------------------------------------------ servers on loopback only


def test_server_command_lines_bind_loopback() -> None:
    from pipelines import scaleout, servers

    for spec in (servers.prefect_spec(REPO / ".prefect"), servers.mlflow_spec(), servers.mlflow_spec(port=5123)):
        argv = spec.argv
        assert argv[argv.index("--host") + 1] == "127.0.0.1", argv
        assert all(url.startswith("http://127.0.0.1:") for url in (spec.url, spec.health_url))
    assert servers.prefect_spec(REPO / ".prefect").env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    with pytest.raises(ValueError, match="address"):
        scaleout.task_runner("ray", 2)  # a Ray started here would listen on every interface: refused
    try:
        import prefect_dask  # noqa: F401  (the optional 'scale' extra)
    except ImportError:
        pass
    else:
        assert scaleout.task_runner("dask", 2).cluster_kwargs["host"] == "127.0.0.1"
    hosts = 0
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in {"0.0.0.0", "::", "[::]"}, f"{path}:{node.lineno}: binds every interface"
            pairs = zip(node.keys, node.values) if isinstance(node, ast.Dict) else []
            for key, value in [*pairs, *((k.arg, k.value) for k in getattr(node, "keywords", []))]:
                if constant(key, key) == "host":  # a literal {"host": ...} or host=...
                    hosts += 1
                    assert constant(value) == "127.0.0.1" or getattr(value, "id", "") == "LOOPBACK", f"{path}:{node.lineno}"
    assert hosts >= 1  # the Dask cluster's


def _listening(pgid: int) -> list[str]:
    """Local addresses of the TCP sockets that processes of group ``pgid`` listen on."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                inodes |= {os.readlink(fd)[8:-1] for fd in (proc / "fd").iterdir() if os.readlink(fd).startswith("socket:[")}
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc to list listening sockets")
def test_a_launched_mlflow_server_listens_on_loopback_only(tmp_path: Path) -> None:
    from pipelines import servers

    spec = servers.mlflow_spec(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", servers.free_port())
    running = servers.start(spec, tmp_path / "mlflow.log")
    try:
        listening = _listening(running.process.pid)
    finally:
        running.stop()
    port = f":{int(spec.url.rsplit(':', 1)[1]):04X}"
    assert any(addr.endswith(port) for addr in listening), listening
    loopback = ("0100007F:", "00000000000000000000000001000000:")  # 127.0.0.1, ::1
    assert listening and all(addr.startswith(loopback) for addr in listening), listening


# ------------------------------------------------------------------------------ no secrets in MLflow or logs


def test_loggable_params_and_tags_drop_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from eds.config import ModelConfig, Params
    from eds.tracking import loggable_params, redact, run_tags

    params = Params(model=ModelConfig(revision=FAKE_HF_TOKEN, system_prompt=FAKE_API_KEY))
    logged = loggable_params(params)
    assert "model.revision" not in logged and "model.system_prompt" not in logged
    assert logged["generate.max_new_tokens"] == "48"  # a key merely containing 'tokens' is kept
    flat = {"hub_token": "x", "wandb.api_key": "y", "db.password": "z", "note": FAKE_HF_TOKEN, "seed": 0}
    assert redact(flat) == {"seed": "0"}
    monkeypatch.setenv("EDS_RUN_TAGS", json.dumps({"hf_token": "abc", "note": FAKE_API_KEY, "variant": "v1"}))
    tags = run_tags(params, "split", {"api_key": "k"})
    assert tags["variant"] == "v1" and not {"hf_token", "note", "api_key"} & set(tags)
    assert FAKE_API_KEY not in json.dumps(tags) and FAKE_HF_TOKEN not in json.dumps(tags)


def test_a_stage_run_logs_no_secret(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The split stage, run for real with tracking on and secrets in its environment, params and
    run tags: neither its output nor the MLflow store holds them."""
    import json

    from mlflow import MlflowClient

    project = write_project(tmp_path / "p", tiny_model_dir, {
        "model": {"revision": FAKE_HF_TOKEN}, "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db"},
    })  # fmt: skip
    env = {**os.environ, "HF_TOKEN": FAKE_HF_TOKEN, "OPENAI_API_KEY": FAKE_API_KEY,
           "EDS_RUN_TAGS": json.dumps({"hub_token": FAKE_HF_TOKEN, "note": FAKE_API_KEY, "variant": "v1"})}  # fmt: skip
    proc = subprocess.run([str(BIN / "python"), "-m", "pipelines", "split"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("eds-demo").experiment_id])
    assert run.data.tags["variant"] == "v1" and run.data.params["generate.max_new_tokens"] == "4"
    logged = json.dumps([run.data.params, run.data.tags, proc.stdout, proc.stderr])
    for secret in (FAKE_HF_TOKEN, FAKE_API_KEY):
        assert secret not in logged
        assert secret.encode() not in (project / "mlflow.db").read_bytes()
    assert "model.revision" not in run.data.params and "hub_token" not in run.data.tags
