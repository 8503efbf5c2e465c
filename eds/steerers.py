"""Interchangeable steerers: EDS itself and the baselines it is compared with.

All of them satisfy :class:`eds.steering.Steerer` and are used the same way::

    with steerer.attach(model) as session:
        session.prepare_generation(prompt_width)
        model.generate(...)

* :class:`EnergySteerer` -- EDS: ``steps`` updates ``h <- h - eta * d``, ``d = grad E(h)`` (or its
  unit vector), at the steered positions of the EBMs' layers (closed-form gradient, float32 math
  by default, bf16 weights with float32 accumulation on the fast path).
* :class:`MeanDiffSteerer` -- a static difference-of-means vector ``alpha * v`` added at the same
  positions and layers (CAA-style).
* :class:`DirectionAblation` -- the refusal direction projected out of the residual stream at every
  position, at the input of every chosen layer and at the last layer's output (Arditi et al. 2024).
* :class:`SystemPromptSteerer` -- changes only the chat formatting (a safety system prompt).
* :class:`~eds.steering.NoSteer` -- the model as it is.

The vectors come from plain tensors of activations (:func:`mean_difference`,
:func:`refusal_direction`); this module does not know where they are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from eds.ebm import EnergyMLP, load_ebm
from eds.energy_grad import EnergyKernel, Normalize, steer_states
from eds.steering import NoSteer, Positions, SteeringError, SteeringSession, check_layers, find_decoder_layers


def mean_difference(good: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``mean(good) - mean(bad)`` in float32, for activations ``good`` [N, D] and ``bad`` [M, D].

    Added to the residual stream it moves states from the bad cluster towards the good one.
    """
    if good.ndim != 2 or bad.ndim != 2 or good.shape[1] != bad.shape[1] or not len(good) or not len(bad):
        raise ValueError(f"need non-empty [N, D] and [M, D] activations, got {tuple(good.shape)}, {tuple(bad.shape)}")
    return good.float().mean(dim=0) - bad.float().mean(dim=0)


def refusal_direction(harmful: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """The unit difference-in-means direction ``mean(harmful) - mean(benign)`` (Arditi et al.)."""
    direction = mean_difference(harmful, benign)
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("harmful and benign activations have the same mean: no direction")
    return direction / norm


def _layer_devices(model: nn.Module, layers: Sequence[int]) -> dict[int, torch.device]:
    decoder_layers = find_decoder_layers(model)
    bad = [i for i in layers if not 0 <= i < len(decoder_layers)]
    if bad:
        raise SteeringError(f"layers {bad} out of range: the model has {len(decoder_layers)} decoder layers")
    return {i: next(decoder_layers[i].parameters()).device for i in layers}


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


def _check_dim(model: nn.Module, dim: int, what: str) -> None:
    hidden = _hidden_size(model)
    if hidden is not None and hidden != dim:
        raise SteeringError(f"{what} has size {dim}, but the model's hidden size is {hidden}")


def _mark_static(tensors: Sequence[torch.Tensor]) -> None:
    """Let CUDA graphs read these tensors in place instead of copying them in at every replay."""
    mark = getattr(torch._dynamo, "mark_static_address", None)
    for t in tensors:
        if mark is not None and t.is_cuda:
            mark(t)


@dataclass(frozen=True)
class SteeringStats:
    """How often an energy steerer fired: states updated at their first step / states considered."""

    fired: int
    considered: int

    @property
    def rate(self) -> float:
        return self.fired / self.considered if self.considered else 0.0


class EnergySteerer:
    """EDS: energy-gradient descent on the hidden states entering the EBMs' layers.

    ``ebms`` maps a decoder-layer index to its EBM. ``dtype`` is the EBM weight dtype while
    steering: float32 (reference) or bfloat16 (fast path, float32 accumulation). Fire counts are
    kept on the device (read once by :meth:`stats`); they are not updated inside a compiled
    region (``torch.compile``), where an in-place counter would keep CUDA graphs from being used.
    """

    system_prompt: str | None = None
    positions: Positions = "steered"

    def __init__(
        self,
        ebms: Mapping[int, EnergyMLP],
        eta: float,
        steps: int = 1,
        normalize: Normalize = "none",
        threshold: float | None = None,
        dtype: torch.dtype = torch.float32,
        name: str = "eds",
    ) -> None:
        if steps < 1 or eta <= 0:
            raise ValueError(f"need steps >= 1 and eta > 0, got steps={steps}, eta={eta}")
        if normalize not in ("none", "unit"):
            raise ValueError(f"normalize must be 'none' or 'unit', got {normalize!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"EBM dtype must be float32, bfloat16 or float16, got {dtype}")
        self.layers = check_layers(list(ebms))
        self.ebms = {int(i): ebm for i, ebm in ebms.items()}
        self.eta, self.steps, self.normalize = float(eta), int(steps), normalize
        self.threshold, self.dtype = threshold, dtype
        self.name = name
        self._kernels: dict[tuple[int, str], EnergyKernel] = {}
        self._active: dict[int, EnergyKernel] = {}
        self._fired: torch.Tensor | None = None  # device counters (threshold or partial mask)
        self._seen: torch.Tensor | None = None
        self._always = 0  # host counter: states steered unconditionally (no threshold, no mask)
        for ebm in self.ebms.values():
            ebm.eval()

    @classmethod
    def from_files(
        cls, paths: Mapping[int, str | Path], hidden_size: int | None = None, **options: Any
    ) -> "EnergySteerer":
        """Load one EBM artifact per layer (:func:`eds.ebm.load_ebm`) and steer with them."""
        return cls({layer: load_ebm(path, hidden_size).model for layer, path in paths.items()}, **options)

    def refresh(self) -> None:
        """Forget the packed EBMs (call after changing an EBM's weights)."""
        self._kernels.clear()

    def kernel(self, layer: int, device: torch.device) -> EnergyKernel:
        """The packed EBM of ``layer`` on ``device`` (built once, then cached: see :meth:`refresh`)."""
        key = (layer, str(device))
        if key not in self._kernels:
            kernel = EnergyKernel.from_module(self.ebms[layer], device, self.dtype)
            _mark_static(kernel.tensors())
            self._kernels[key] = kernel
        return self._kernels[key]

    def attach(self, model: nn.Module) -> SteeringSession:
        devices = _layer_devices(model, self.layers)
        for layer in self.layers:
            _check_dim(model, self.ebms[layer].spec.input_dim, f"the EBM of layer {layer}")
            self.ebms[layer].eval()
        self._active = {layer: self.kernel(layer, devices[layer]) for layer in self.layers}
        first = devices[self.layers[0]]
        self._fired = torch.zeros((), dtype=torch.long, device=first)
        self._seen = torch.zeros((), dtype=torch.long, device=first)
        self._always = 0
        return SteeringSession(model, {layer: self._edit for layer in self.layers}, self.positions)

    def _edit(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        kernel = self._active[layer]
        new, fired = steer_states(kernel, flat.float(), self.eta, self.steps, self.normalize, self.threshold)
        out = new.to(h.dtype).view_as(h)
        if mask is not None:
            out = torch.where(mask.unsqueeze(-1), out, h)
        if self._fired is None or self._seen is None or torch.compiler.is_compiling():
            return out
        if mask is not None:
            flat_mask = mask.reshape(-1)
            self._fired += (fired & flat_mask).sum().to(self._fired.device)
            self._seen += flat_mask.sum().to(self._seen.device)
        elif self.threshold is not None:
            self._fired += fired.sum().to(self._fired.device)
            self._seen += flat.shape[0]
        else:  # every state fires: count on the host, no device op
            self._always += flat.shape[0]
        return out

    def stats(self) -> SteeringStats:
        """Fire counts since the last :meth:`attach` (one host sync)."""
        if self._fired is None or self._seen is None:
            return SteeringStats(0, 0)
        return SteeringStats(int(self._fired) + self._always, int(self._seen) + self._always)


class MeanDiffSteerer:
    """Adds ``alpha * v[layer]`` to the hidden states entering each layer, at the steered positions."""

    system_prompt: str | None = None
    positions: Positions = "steered"

    def __init__(self, vectors: Mapping[int, torch.Tensor], alpha: float = 1.0, name: str = "mean_diff") -> None:
        self.layers = check_layers(list(vectors))
        self.vectors = {int(i): v.detach().float().reshape(-1) for i, v in vectors.items()}
        self.alpha = float(alpha)
        self.name = name
        self._active: dict[int, torch.Tensor] = {}

    def attach(self, model: nn.Module) -> SteeringSession:
        devices = _layer_devices(model, self.layers)
        for layer, v in self.vectors.items():
            _check_dim(model, v.numel(), f"the vector of layer {layer}")
        self._active = {i: (self.alpha * self.vectors[i]).to(devices[i]) for i in self.layers}
        _mark_static(list(self._active.values()))
        return SteeringSession(model, {layer: self._edit for layer in self.layers}, self.positions)

    def _edit(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = (h.float() + self._active[layer]).to(h.dtype)
        return out if mask is None else torch.where(mask.unsqueeze(-1), out, h)


class DirectionAblation:
    """Projects a direction out of the residual stream: ``h <- h - (h . r) r``, ``r`` unit.

    Applied at every position (prompt included) at the input of each of ``layers`` (default: all)
    and, when the last layer is included, at its output: the residual stream between layers.
    Arditi et al. also ablate the mid-layer residual (after attention, before the MLP); reaching
    it needs per-family code, so it is not edited here.
    """

    system_prompt: str | None = None
    positions: Positions = "all"

    def __init__(
        self, direction: torch.Tensor, layers: Sequence[int] | Literal["all"] = "all", name: str = "ablation"
    ) -> None:
        r = direction.detach().float().reshape(-1)
        norm = r.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("the ablated direction must be a non-zero finite vector")
        self.direction = r / norm
        self.layer_spec = layers if layers == "all" else check_layers(layers)
        self.name = name
        self._active: dict[int, torch.Tensor] = {}

    def attach(self, model: nn.Module) -> SteeringSession:
        n_layers = len(find_decoder_layers(model))
        layers = tuple(range(n_layers)) if self.layer_spec == "all" else self.layer_spec
        devices = _layer_devices(model, layers)
        _check_dim(model, self.direction.numel(), "the ablated direction")
        self._active = {i: self.direction.to(devices[i]) for i in layers}
        final = n_layers - 1 in layers
        if final:
            self._active[n_layers] = self._active[n_layers - 1]
        _mark_static(list(self._active.values()))
        return SteeringSession(
            model, {layer: self._edit for layer in layers}, self.positions, final_output=self._edit if final else None
        )

    def _edit(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        r = self._active[layer]
        hf = h.float()
        out = (hf - (hf @ r).unsqueeze(-1) * r).to(h.dtype)
        return out if mask is None else torch.where(mask.unsqueeze(-1), out, h)


class SystemPromptSteerer(NoSteer):
    """The safety-system-prompt baseline: no hooks, only a different system prompt in the chat."""

    def __init__(self, system_prompt: str, name: str = "system_prompt") -> None:
        if not system_prompt.strip():
            raise ValueError("the system prompt is empty")
        self.system_prompt = system_prompt
        self.name = name


__all__ = [
    "DirectionAblation",
    "EnergySteerer",
    "MeanDiffSteerer",
    "NoSteer",
    "SteeringStats",
    "SystemPromptSteerer",
    "mean_difference",
    "refusal_direction",
]
