"""The energy model E(h): an MLP from one layer's hidden state to a scalar energy.

Architecture as in the paper and the authors' code: blocks Linear -> LayerNorm -> SiLU ->
Dropout, then a Linear head to one scalar. Inputs are standardised inside the module,
``x = (h - mean) / std``, with ``mean`` and ``std`` stored as buffers next to the weights, so the
same standardisation is applied when training, scoring and steering (``mean = 0, std = 1`` when
training chose none). Low energy = desirable state (helpful answer, safe refusal).

Artifacts are a safetensors file of the state dict plus a JSON sidecar with the spec and any
metadata; loading checks the hidden size against the model it will read from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from eds.records import atomic_write_bytes, atomic_write_json

PAPER_WIDTHS = (2048, 1024, 1024, 512)


class EBMLoadError(RuntimeError):
    """An EBM artifact is missing, malformed, or does not fit the model it should read."""


@dataclass(frozen=True)
class EBMSpec:
    input_dim: int
    widths: tuple[int, ...] = PAPER_WIDTHS
    dropout: float = 0.15
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.input_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"invalid EBM spec: input_dim={self.input_dim}, widths={self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EBM dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EBMSpec":
        return cls(
            input_dim=int(data["input_dim"]),
            widths=tuple(int(w) for w in data["widths"]),
            dropout=float(data["dropout"]),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-5)),
        )


class EnergyBlock(nn.Module):
    """Linear -> LayerNorm -> SiLU -> Dropout."""

    def __init__(self, d_in: int, d_out: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out, eps=eps)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.norm(self.linear(x))))


class EnergyMLP(nn.Module):
    """E(h) for hidden states ``h`` of shape ``[..., input_dim]``; returns energies ``[...]``."""

    def __init__(self, spec: EBMSpec) -> None:
        super().__init__()
        self.spec = spec
        dims = (spec.input_dim, *spec.widths)
        self.blocks = nn.ModuleList(
            EnergyBlock(d_in, d_out, spec.dropout, spec.layer_norm_eps) for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.head = nn.Linear(dims[-1], 1)
        self.register_buffer("mean", torch.zeros(spec.input_dim))
        self.register_buffer("std", torch.ones(spec.input_dim))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-6) -> None:
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std).clamp_min(min_std))

    def standardize(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.mean) / self.std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.standardize(h)
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)


def ebm_stem(layer: int) -> str:
    """File stem of a layer's EBM in an EBM folder: ``layer_07`` (+ ``.safetensors``/``.json``)."""
    return f"layer_{layer:02d}"


@dataclass
class EBMArtifact:
    """An EBM with the metadata stored beside it (layer, hidden size, metrics, data hash ...)."""

    model: EnergyMLP
    metadata: dict[str, Any] = field(default_factory=dict)


def save_ebm(path: str | Path, model: EnergyMLP, metadata: dict[str, Any] | None = None) -> None:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically."""
    path = Path(path).with_suffix("")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path.with_suffix(".safetensors"), save(state))
    atomic_write_json(path.with_suffix(".json"), {"spec": asdict(model.spec), "metadata": metadata or {}})


def load_ebm(path: str | Path, hidden_size: int | None = None, device: str | torch.device = "cpu") -> EBMArtifact:
    """Load an EBM saved by :func:`save_ebm`, in eval mode; check its input size if given."""
    path = Path(path).with_suffix("")
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not weights.is_file() or not sidecar.is_file():
        raise EBMLoadError(f"EBM not found: expected {weights} and {sidecar}")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        spec = EBMSpec.from_dict(info["spec"])
    except (ValueError, KeyError, TypeError) as err:
        raise EBMLoadError(f"{sidecar}: malformed EBM metadata: {err}") from None
    if hidden_size is not None and spec.input_dim != hidden_size:
        raise EBMLoadError(
            f"{weights}: EBM reads hidden size {spec.input_dim}, but the model's hidden size is {hidden_size}"
        )
    model = EnergyMLP(spec)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise EBMLoadError(f"{weights}: cannot read EBM weights: {err}") from None
    return EBMArtifact(model.to(device).eval(), dict(info.get("metadata", {})))


__all__ = [
    "EBMArtifact",
    "EBMLoadError",
    "EBMSpec",
    "EnergyBlock",
    "EnergyMLP",
    "PAPER_WIDTHS",
    "ebm_stem",
    "load_ebm",
    "save_ebm",
]
