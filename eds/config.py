"""Typed, validated configuration: ``params.yaml`` is read and checked once, here.

``params.yaml`` is grouped by stage. A top-level ``profile`` names an overlay under
``profiles:`` that is deep-merged over the base sections before validation, so the demo
run, the benchmark-copy run and a paper-scale GPU run are one params change apart::

    profile: benchmarks        # or: demo, paper
    profiles:
      benchmarks: {data: {train: [...]}, generate: {batch_size: 16}}

Every error (unknown key, wrong type, impossible value, missing path) is raised as one
:class:`ConfigError` whose message names the offending key, before any model is loaded.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

EMBEDDED_PREFIX = "embedded:"
DATA_ROOT_ENV = "EDS_DATA_ROOT"


class ConfigError(ValueError):
    """params.yaml is malformed; the message names the key and what is wrong with it."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


class ProjectConfig(Section):
    name: str = Field("eds", min_length=1, description="Pipeline name; MLflow experiment prefix.")
    seed: StrictInt = Field(0, ge=0)


class ModelConfig(Section):
    id: str = Field(
        "embedded:smollm2-135m-instruct",
        min_length=1,
        description="Hub id, local folder, .gguf file, or 'embedded:<name>'.",
    )
    adapter: str | None = Field(None, description="PEFT (LoRA) adapter folder or hub id.")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    device_map: str | None = Field(None, description="e.g. 'auto' to spread a big model over GPUs.")
    system_prompt: str | None = None
    trust_remote_code: StrictBool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head = value.split(":", 1)[0]
        if head not in {"auto", "cpu", "cuda", "mps"}:
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        if ":" in value and (head != "cuda" or not value.split(":", 1)[1].isdigit()):
            raise ValueError(f"only cuda takes an index (cuda:0), got {value!r}")
        return value


class DatasetRef(Section):
    name: str = Field(min_length=1, description="A name from eds.datasets.REGISTRY.")
    limit: StrictInt | None = Field(None, ge=1, description="Seeded sample of at most this many rows.")
    split: str | None = Field(None, description="Override the registry's default split.")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        from eds.datasets import REGISTRY

        if value not in REGISTRY:
            raise ValueError(f"unknown dataset {value!r}; known: {', '.join(sorted(REGISTRY))}")
        return value


class DataConfig(Section):
    source: Literal["local", "hub"] = Field("local", description="Read benchmark copies or the hub.")
    root: str = Field("../shared/benchmarks", description=f"Local root; ${DATA_ROOT_ENV} overrides.")
    train: tuple[DatasetRef, ...] = Field(default=(DatasetRef(name="demo_train"),), min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "DataConfig":
        seen = [(ref.name, ref.split) for ref in self.train]
        if len(seen) != len(set(seen)):
            raise ValueError("data.train lists the same dataset (and split) twice")
        return self


class GenerateConfig(Section):
    batch_size: StrictInt = Field(8, ge=1)
    max_new_tokens: StrictInt = Field(48, ge=1, le=8192)
    max_prompt_tokens: StrictInt = Field(512, ge=8, description="Longer prompts keep their first N tokens.")
    shard_size: StrictInt = Field(64, ge=1, description="Prompts per output shard (the resume unit).")


class JudgeConfig(Section):
    name: str = Field("keyword", description="A name from eds.judge.JUDGES.")
    window: StrictInt = Field(160, ge=1, description="Keyword judge: characters from the start searched.")
    model_id: str | None = Field(None, description="Classifier judge: HF sequence-classification model.")
    refusal_label: str = Field("refusal", description="Classifier judge: label meaning 'refused'.")
    batch_size: StrictInt = Field(16, ge=1)

    @model_validator(mode="after")
    def _known(self) -> "JudgeConfig":
        from eds.judge import JUDGES

        if self.name not in JUDGES:
            raise ValueError(f"unknown judge {self.name!r}; known: {', '.join(sorted(JUDGES))}")
        if self.name == "classifier" and not self.model_id:
            raise ValueError("the classifier judge needs classify.judge.model_id")
        return self


class ClassifyConfig(Section):
    judge: JudgeConfig = JudgeConfig()


class TrackingConfig(Section):
    enabled: StrictBool = True
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (relative to the repo).")
    experiment: str | None = Field(None, description="Default: '<project.name>-<profile>'.")


class Params(Section):
    profile: str = "demo"
    project: ProjectConfig = ProjectConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    classify: ClassifyConfig = ClassifyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"{self.project.name}-{self.profile}"

    def data_root(self) -> Path:
        """The local benchmark root, with ``$EDS_DATA_ROOT`` taking precedence."""
        return Path(os.environ.get(DATA_ROOT_ENV) or self.data.root).expanduser()


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in; nested mappings merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    errors = err.errors()
    for item in errors:
        loc = tuple(item["loc"])
        # A container's own error caused by an invalid child (e.g. "tuple too short" after its only
        # item failed) is noise: the child's error already names the real problem.
        if any(len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in errors):
            continue
        key = ".".join(str(part) for part in loc) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(got, Mapping) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {message}{shown}")
    return "\n".join(lines)


def resolve(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the selected profile overlay; the result has no ``profiles`` key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params must be a mapping, got {type(raw).__name__}")
    data = dict(raw)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError("profiles: must be a mapping of profile name -> overrides")
    profile = data.get("profile", "demo")
    if profile not in profiles and profile != "demo":
        known = ", ".join(sorted({"demo", *profiles})) or "demo"
        raise ConfigError(f"profile: unknown profile {profile!r}; known: {known}")
    overlay = profiles.get(profile) or {}
    if not isinstance(overlay, Mapping):
        raise ConfigError(f"profiles.{profile}: must be a mapping of overrides")
    if "profile" in overlay or "profiles" in overlay:
        raise ConfigError(f"profiles.{profile}: a profile cannot set 'profile' or 'profiles'")
    return deep_merge(data, overlay)


def parse(raw: Mapping[str, Any], source: str = "params.yaml", check_paths: bool = True) -> Params:
    """Validate a raw mapping (as read from YAML) into :class:`Params`."""
    try:
        params = Params.model_validate(resolve(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    if check_paths:
        check_paths_exist(params, source)
    return params


def load(path: str | Path = "params.yaml", check_paths: bool = True) -> Params:
    """Read and validate a params file. Relative paths inside it are taken from the CWD."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse(raw or {}, source=str(path), check_paths=check_paths)


def _looks_local(ref: str) -> bool:
    """A path the user clearly meant as local (a hub id is 'org/name', never './x' or 'x.gguf')."""
    return ref.startswith((".", "/", "~")) or ref.endswith(".gguf")


def check_paths_exist(params: Params, source: str = "params.yaml") -> None:
    """Fail early on paths that must exist: local model, adapter, local data root."""
    problems = []
    model_id = params.model.id
    if not model_id.startswith(EMBEDDED_PREFIX) and _looks_local(model_id):
        if not Path(model_id).expanduser().exists():
            problems.append(f"{source}: model.id: path does not exist: {model_id}")
    elif model_id.startswith(EMBEDDED_PREFIX):
        from eds.models import EMBEDDED_MODELS

        name = model_id[len(EMBEDDED_PREFIX) :]
        if name not in EMBEDDED_MODELS:
            problems.append(
                f"{source}: model.id: unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}"
            )
    adapter = params.model.adapter
    if adapter and _looks_local(adapter) and not Path(adapter).expanduser().exists():
        problems.append(f"{source}: model.adapter: path does not exist: {adapter}")
    if params.data.source == "local" and _needs_data_root(params):
        root = params.data_root()
        if not root.is_dir():
            problems.append(
                f"{source}: data.root: benchmark folder does not exist: {root} "
                f"(set data.root or ${DATA_ROOT_ENV})"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def _needs_data_root(params: Params) -> bool:
    from eds.datasets import REGISTRY

    return any(REGISTRY[ref.name].needs_root for ref in params.data.train)
