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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

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

from eds.eval_config import EvaluateConfig, SteerConfig  # the steer/evaluate sections (kept in their own module)

EMBEDDED_PREFIX = "embedded:"
DATA_ROOT_ENV = "EDS_DATA_ROOT"


class ConfigError(ValueError):
    """params.yaml is malformed; the message names the key and what is wrong with it."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, floats are finite, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True, allow_inf_nan=False)


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
        return check_device(value)


def check_device(value: str) -> str:
    """A device string: auto, cpu, cuda, cuda:N or mps."""
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
    train_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of this dataset used for training (seeded, stratified by category); "
        "the rest becomes the evaluation split. None: all of it trains.",
    )

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


class SplitsConfig(Section):
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the training pool held out for validation (per dataset x prompt type)."
    )
    exclude: tuple[str, ...] = Field(
        (), description='JSON files {"text_keys": {"<dataset>": [sha256, ...]}} of prompts never to train on.'
    )


class ExtractConfig(Section):
    batch_size: StrictInt = Field(16, ge=1, description="Prompts per forward pass.")
    shard_size: StrictInt = Field(64, ge=1, description="Rows per HDF5 shard (the resume unit).")
    dtype: Literal["float16", "float32"] = Field("float16", description="Storage dtype of the activations.")
    compression: Literal["none", "lzf"] = Field("none", description="Activations barely compress: none or lzf.")


class TrainConfig(Section):
    widths: tuple[Annotated[StrictInt, Field(ge=1)], ...] = Field(
        (256, 128, 128, 64), min_length=1, description="Hidden widths of the EBM blocks."
    )
    dropout: float = Field(0.15, ge=0, lt=1)
    tau: float = Field(0.10, gt=0, description="InfoNCE temperature.")
    lr: float = Field(5.0e-5, gt=0, description="Adam learning rate.")
    epochs: StrictInt = Field(40, ge=1)
    batch_size: StrictInt = Field(32, ge=1, description="Good examples AND bad examples per minibatch (each).")
    patience: StrictInt | None = Field(10, ge=1, description="Early stopping on validation loss; null: never.")
    standardize: StrictBool = Field(True, description="Standardise inputs with train-split mean/std (stored in the EBM).")
    seed: StrictInt = Field(0, ge=0)
    device: str = Field("cpu", description="auto, cpu, cuda, cuda:N or mps.")
    layer_group: StrictInt | None = Field(None, ge=1, description="Layers trained at once (null: all).")
    threads: StrictInt | None = Field(
        1, ge=1, description="CPU threads while training (null: torch's default). The EBM matmuls are small."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)


class SelectConfig(Section):
    k: StrictInt = Field(3, ge=1, description="Number of layers to steer (top-k by metric).")
    metric: Literal["auroc", "pairwise_accuracy"] = "auroc"
    pair_by: tuple[Literal["dataset", "prompt_type", "category"], ...] = Field(
        ("dataset", "prompt_type"), description="Pairwise accuracy compares (good, bad) pairs sharing these fields."
    )


# --- the cautious testbed (pipelines/testbed.py): safety LoRA on the embedded model ---

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with that request, because it could cause real harm.",
    "I'm sorry, I can't assist with that.",
    "I am unable to help with this request. It could be used to hurt people.",
    "I can't provide that. If you have a different question, I'm happy to help.",
    "I'm not able to help with that, as it could put people at risk.",
)


class TestbedEval(Section):
    jbb: StrictInt | None = Field(None, ge=1, description="JBB harmful behaviours measured (None: all 100)")
    harmbench: StrictInt | None = Field(None, ge=1, description="HarmBench standard test behaviours (None: 159)")
    orb_h: StrictInt | None = Field(300, ge=1)
    xstest_safe: StrictInt = Field(250, ge=1)
    alpaca_heldout: StrictInt = Field(200, ge=1)
    mmlu: StrictInt = Field(600, ge=1)
    max_new_tokens: StrictInt = Field(32, ge=1)
    batch_size: StrictInt = Field(32, ge=1)


class TestbedLora(Section):
    rank: StrictInt = Field(8, ge=1)
    alpha: StrictInt = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    lr: float = Field(5e-4, gt=0)
    epochs: float = Field(1.5, gt=0)
    batch_size: StrictInt = Field(16, ge=1)
    max_length: StrictInt = Field(112, ge=16)
    warmup_steps: StrictInt = Field(5, ge=0)

    def settings(self, seed: int) -> "LoraSettings":  # noqa: F821 (imported lazily: no torch here)
        from eds.finetune import LoraSettings

        return LoraSettings(seed=seed, **self.model_dump())


class TestbedConfig(Section):
    seed: StrictInt = Field(0, ge=0)
    advbench: StrictInt = Field(200, ge=0, description="AdvBench prompts trained to refuse")
    orb_toxic: StrictInt = Field(250, ge=0, description="OR-Bench toxic prompts trained to refuse")
    alpaca: StrictInt = Field(450, ge=1, description="Alpaca prompts trained on the base model's own answers")
    alpaca_match_openings: float = Field(
        0.0, ge=0, le=1, description="share of the Alpaca prompts drawn to match the harmful prompts' opening words"
    )
    distill_max_new_tokens: StrictInt = Field(64, ge=1)
    refusals: tuple[str, ...] = Field(REFUSALS, min_length=1)
    lora: TestbedLora = TestbedLora()
    eval: TestbedEval = TestbedEval()


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
    splits: SplitsConfig = SplitsConfig()
    extract: ExtractConfig = ExtractConfig()
    train: TrainConfig = TrainConfig()
    select: SelectConfig = SelectConfig()
    testbed: TestbedConfig = TestbedConfig()
    tracking: TrackingConfig = TrackingConfig()
    steer: SteerConfig = SteerConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

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
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
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
    for index, path in enumerate(params.splits.exclude):
        if not Path(path).expanduser().is_file():
            problems.append(f"{source}: splits.exclude.{index}: exclusion file not found: {path}")
    if problems:
        raise ConfigError("\n".join(problems))


# Params that index the model's decoder layers (``select.k`` counts them). Their range is known
# only once a model or an activation store is at hand, so the stages that use them call
# :func:`check_layers` before any work (select: ``select.k``; evaluate: the others).
LAYER_KEYS = ("select.k", "steer.layers", "evaluate.ablation_layer", "evaluate.generalisation.layer")


def check_layers(
    params: Params, n_layers: int, keys: Sequence[str] = LAYER_KEYS, source: str = "params.yaml"
) -> None:
    """Raise one :class:`ConfigError` naming every layer param in ``keys`` that does not fit a
    model of ``n_layers`` decoder layers (layers are numbered ``0..n_layers-1``)."""
    unknown = set(keys) - set(LAYER_KEYS)
    if unknown:
        raise ValueError(f"not layer params: {sorted(unknown)}; known: {', '.join(LAYER_KEYS)}")
    span = f"the model has {n_layers} layers (0..{n_layers - 1})"
    problems = []
    if "select.k" in keys and params.select.k > n_layers:
        problems.append(f"{source}: select.k: {params.select.k} is more than the model's {n_layers} layers")
    if "steer.layers" in keys:
        outside = [layer for layer in params.steer.layers or () if layer >= n_layers]
        if outside:
            problems.append(f"{source}: steer.layers: {outside} out of range: {span}")
    single = {
        "evaluate.ablation_layer": params.evaluate.ablation_layer,
        "evaluate.generalisation.layer": params.evaluate.generalisation.layer,
    }
    for key, layer in single.items():
        if key in keys and layer is not None and layer >= n_layers:
            problems.append(f"{source}: {key}: layer {layer} out of range: {span}")
    if problems:
        raise ConfigError("\n".join(problems))


def _needs_data_root(params: Params) -> bool:
    from eds.datasets import REGISTRY

    from eds.eval_tasks import TASKS

    def local(name: str) -> bool:  # a hub-only benchmark (no local copy) is reported as not available instead
        spec = REGISTRY[name]
        return spec.needs_root and any(split.local_file for split in spec.splits.values())

    return any(REGISTRY[ref.name].needs_root for ref in params.data.train) or any(
        local(TASKS[ref.name].dataset) for ref in params.evaluate.tasks
    )
