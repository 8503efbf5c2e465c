"""The model variants an evaluation compares, built from params and the trained artifacts.

* ``none`` -- the model as it is;
* ``system_prompt`` -- a safety system prompt (``evaluate.system_prompt``), no hooks;
* ``eds`` -- Energy-Driven Steering with the ``steer`` section (eta, steps, normalisation,
  threshold) at the selected layers (``models/selection.json``) using ``models/ebm``; the eta
  sweep adds one ``eds_eta<eta>_s<steps>`` variant per other (eta, steps) pair;
* ``mean_diff`` -- CAA: ``alpha * (mean good - mean bad)`` added at the same layers and positions,
  the means taken over the **train** split of the activation store;
* ``ablation`` -- the refusal direction (train-split mean of harmful minus benign prompts at one
  layer, Arditi et al. 2024) projected out at every layer and position.

Every variant is a plain record (:meth:`Variant.as_record`) that goes into the responses'
fingerprint, MLflow tags and the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from eds.ebm import ebm_stem
from eds.eval_config import EvaluateConfig, SteerConfig
from eds.steering import NoSteer, Steerer
from eds.steerers import (
    DirectionAblation,
    EnergySteerer,
    MeanDiffSteerer,
    SystemPromptSteerer,
    mean_difference,
    refusal_direction,
)

VariantKind = Literal["none", "system_prompt", "eds", "mean_diff", "ablation"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Variant:
    """One configuration of the model under evaluation."""

    name: str
    kind: VariantKind
    eta: float | None = None
    steps: int | None = None
    normalize: str | None = None
    threshold: float | None = None
    dtype: str | None = None
    layers: tuple[int, ...] = ()
    alpha: float | None = None
    system_prompt: str | None = None
    direction_layer: int | None = None
    sweep: bool = False  # an extra point of the eta sweep (not the main ``eds`` variant)

    def as_record(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def tags(self) -> dict[str, str]:
        """MLflow tags: variant, kind, and the steering settings it has."""
        tags = {"variant": self.name, "variant_kind": self.kind}
        for key in ("eta", "steps", "normalize", "alpha", "direction_layer"):
            value = getattr(self, key)
            if value is not None:
                tags[key] = str(value)
        if self.layers:
            tags["layers"] = json.dumps(list(self.layers))
        return tags


def sweep_name(eta: float, steps: int) -> str:
    return f"eds_eta{eta:g}_s{steps}"


def build_variants(cfg: EvaluateConfig, steer: SteerConfig, selected_layers: Sequence[int]) -> list[Variant]:
    """The configured variants in order, then the sweep's EDS points (duplicates of ``eds`` skipped)."""
    layers = tuple(steer.layers) if steer.layers else tuple(selected_layers)
    best = int(selected_layers[0]) if selected_layers else None

    def eds(name: str, eta: float, steps: int, sweep: bool) -> Variant:
        return Variant(name, "eds", eta=eta, steps=steps, normalize=steer.normalize, threshold=steer.threshold,
                       dtype=steer.dtype, layers=layers, sweep=sweep)

    out: list[Variant] = []
    for kind in cfg.variants:
        if kind == "none":
            out.append(Variant("none", "none"))
        elif kind == "system_prompt":
            out.append(Variant("system_prompt", "system_prompt", system_prompt=cfg.system_prompt))
        elif kind == "eds":
            out.append(eds("eds", steer.eta, steer.steps, False))
        elif kind == "mean_diff":
            out.append(Variant("mean_diff", "mean_diff", alpha=cfg.mean_diff_alpha, layers=layers))
        elif kind == "ablation":
            layer = cfg.ablation_layer if cfg.ablation_layer is not None else best
            out.append(Variant("ablation", "ablation", direction_layer=layer))
    main = (steer.eta, steer.steps) if "eds" in cfg.variants else None
    for steps in cfg.sweep.steps or (steer.steps,):
        for eta in cfg.sweep.eta:
            if (eta, steps) != main:
                out.append(eds(sweep_name(eta, steps), eta, steps, True))
    names = [v.name for v in out]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate variant names: {names}")
    for variant in out:
        if variant.kind in ("eds", "mean_diff") and not variant.layers:
            raise ValueError(f"variant {variant.name} needs layers: no steer.layers and no selected layers")
        if variant.kind == "ablation" and variant.direction_layer is None:
            raise ValueError("the ablation baseline needs a layer: no evaluate.ablation_layer and no selected layers")
    return out


@dataclass
class SteeringArtifacts:
    """Where the steerers' ingredients live: EBMs, the activation store (for baseline vectors)."""

    ebm_dir: Path
    hidden_size: int | None = None
    activations: Path | None = None
    _store: Any = field(default=None, repr=False)

    def store(self) -> Any:
        if self._store is None:
            from eds.activation_store import ActivationStore

            if self.activations is None:
                raise FileNotFoundError("the mean_diff and ablation baselines need the activation store")
            self._store = ActivationStore(self.activations)
        return self._store

    def fingerprint(self, variant: Variant) -> dict[str, Any]:
        """What the variant's steerer is made of, for the responses' fingerprint."""
        if variant.kind == "eds":
            manifest = _read_json(self.ebm_dir / "manifest.json")
            files = manifest.get("files", {})
            return {f"layer_{l}": [files.get(ebm_stem(l) + s) for s in (".safetensors", ".json")] for l in variant.layers}
        if variant.kind in ("mean_diff", "ablation"):
            manifest = self.store().manifest
            return {"activations": manifest.get("index_sha256"), "key": manifest.get("key")}
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _train_rows(store: Any, **conditions: Any) -> list[int]:
    rows = store.rows_where(split="train", **conditions)
    if not rows:
        raise ValueError(f"the activation store has no train rows with {conditions}")
    return rows


def mean_diff_vectors(store: Any, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """CAA vectors per layer: train-split mean of good states minus mean of bad states."""
    good, bad = _train_rows(store, label="good"), _train_rows(store, label="bad")
    return {
        int(l): mean_difference(torch.from_numpy(store.read_layer(l, good)), torch.from_numpy(store.read_layer(l, bad)))
        for l in layers
    }


def ablation_vector(store: Any, layer: int) -> torch.Tensor:
    """The refusal direction at ``layer``: train-split mean of harmful minus benign prompt states."""
    harmful, benign = _train_rows(store, prompt_type="harmful"), _train_rows(store, prompt_type="benign")
    return refusal_direction(torch.from_numpy(store.read_layer(layer, harmful)), torch.from_numpy(store.read_layer(layer, benign)))


def build_steerer(variant: Variant, artifacts: SteeringArtifacts) -> Steerer:
    """The steerer of a variant (EBMs loaded, baseline vectors computed from the train split)."""
    if variant.kind == "none":
        return NoSteer()
    if variant.kind == "system_prompt":
        return SystemPromptSteerer(str(variant.system_prompt), name=variant.name)
    if variant.kind == "eds":
        paths = {l: artifacts.ebm_dir / ebm_stem(l) for l in variant.layers}
        return EnergySteerer.from_files(
            paths, artifacts.hidden_size, eta=float(variant.eta or 0), steps=int(variant.steps or 1),
            normalize=variant.normalize or "none", threshold=variant.threshold,
            dtype=_DTYPES[variant.dtype or "float32"], name=variant.name,
        )
    if variant.kind == "mean_diff":
        return MeanDiffSteerer(mean_diff_vectors(artifacts.store(), variant.layers), alpha=float(variant.alpha or 1.0), name=variant.name)
    if variant.kind == "ablation":
        return DirectionAblation(ablation_vector(artifacts.store(), int(variant.direction_layer or 0)), "all", name=variant.name)
    raise ValueError(f"unknown variant kind {variant.kind!r}")


__all__ = [
    "SteeringArtifacts",
    "Variant",
    "VariantKind",
    "ablation_vector",
    "build_steerer",
    "build_variants",
    "mean_diff_vectors",
    "sweep_name",
]
