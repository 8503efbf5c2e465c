"""The closed-form input gradient of an :class:`~eds.ebm.EnergyMLP` and the steering update built on it.

Steering needs ``d = grad_h E(h)`` for a handful of hidden states at every decoded token, several
times per token and per steered layer. Autograd would build (and free) a graph each time; here the
gradient is written out once, by hand, for the EBM's fixed architecture:

    x0 = (h - mean) / std
    y_k = x_{k-1} W_k^T + b_k;   n_k = LayerNorm(y_k) = gamma_k * xhat_k + beta_k;   x_k = SiLU(n_k)
    E = x_L w_head + b_head

and backwards, with ``g`` the gradient flowing in:

    SiLU'(n)  = s(n) * (1 + n * (1 - s(n))),  s = sigmoid
    LayerNorm: dy = (q - mean(q) - xhat * mean(q * xhat)) / sigma,  q = gamma * g
    Linear:    dx = dy W
    input:     dh = dx0 / std

:meth:`EnergyKernel.energy_and_grad` evaluates this chain with ATen's fused SiLU and LayerNorm
backward kernels (no autograd graph; ~6 kernels per block);
:meth:`EnergyKernel.energy_and_grad_explicit` writes it out op by op. Both are tested against
autograd. Dropout is the identity (eval semantics), whatever mode the module is in. Everything
runs in float32 by default; with ``weight_dtype=torch.bfloat16`` the matrix products read bf16
weights and accumulate in float32 (the fast path: bf16 operands, float32 accumulation inside the
GEMM, result rounded to bf16 and taken back to float32), while LayerNorm, SiLU and the update stay
in float32.

:func:`reference_steer` is the straightforward autograd implementation the closed form is tested
against (and the "authors' approach" in the overhead benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from eds.ebm import EnergyMLP

Normalize = Literal["none", "unit"]
NORMALIZE_EPS = 1e-12


@dataclass(frozen=True)
class PackedBlock:
    """One Linear -> LayerNorm -> SiLU block as plain tensors."""

    weight: torch.Tensor  # [out, in], weight dtype
    bias: torch.Tensor  # [out], float32
    gamma: torch.Tensor  # [out], float32
    beta: torch.Tensor  # [out], float32


class EnergyKernel:
    """An EBM's weights packed for steering: plain tensors on one device, no dropout, no autograd.

    Build it with :meth:`from_module`; it holds no reference to the module, so later changes to the
    module (training, ``.train()``) do not affect a kernel already built.
    """

    def __init__(
        self,
        blocks: list[PackedBlock],
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        eps: float,
    ) -> None:
        self.blocks = blocks
        self.head_weight = head_weight  # [w_last], float32
        self.head_bias = head_bias  # [], float32
        self.mean = mean  # [D], float32
        self.inv_std = 1.0 / std  # [D], float32
        self.eps = float(eps)
        self.weight_dtype = blocks[0].weight.dtype

    @classmethod
    def from_module(
        cls,
        ebm: EnergyMLP,
        device: torch.device | str | None = None,
        weight_dtype: torch.dtype = torch.float32,
    ) -> "EnergyKernel":
        """Pack ``ebm`` for ``device``; matrix weights in ``weight_dtype``, the rest in float32."""
        device = torch.device(device) if device is not None else ebm.head.weight.device

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=device, dtype=torch.float32).contiguous()

        blocks = [
            PackedBlock(
                weight=b.linear.weight.detach().to(device=device, dtype=weight_dtype).contiguous(),
                bias=f32(b.linear.bias),
                gamma=f32(b.norm.weight),
                beta=f32(b.norm.bias),
            )
            for b in ebm.blocks
        ]
        return cls(
            blocks,
            head_weight=f32(ebm.head.weight.reshape(-1)),
            head_bias=f32(ebm.head.bias.reshape(())),
            mean=f32(ebm.mean),
            std=f32(ebm.std),
            eps=ebm.spec.layer_norm_eps,
        )

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the kernel reads (e.g. to mark them as static addresses for CUDA graphs)."""
        out = [self.head_weight, self.head_bias, self.mean, self.inv_std]
        for b in self.blocks:
            out += [b.weight, b.bias, b.gamma, b.beta]
        return out

    def _matmul(self, x: torch.Tensor, w: torch.Tensor, transpose: bool) -> torch.Tensor:
        """``x @ w.T`` (forward) or ``x @ w`` (backward), float32 result, float32 accumulation."""
        if w.dtype != torch.float32:
            x = x.to(w.dtype)
        out = F.linear(x, w) if transpose else x @ w
        return out.float()

    def energy(self, h: torch.Tensor) -> torch.Tensor:
        """E(h) for float32 states ``h`` [N, D] (forward only)."""
        x = (h - self.mean) * self.inv_std
        for b in self.blocks:
            y = self._matmul(x, b.weight, transpose=True) + b.bias
            x = F.silu(F.layer_norm(y, y.shape[-1:], b.gamma, b.beta, self.eps))
        return x @ self.head_weight + self.head_bias

    def energy_and_grad(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E(h) [N] and grad_h E(h) [N, D] for float32 states ``h`` [N, D], in closed form.

        The backward chain is the formula of the module docstring, evaluated with ATen's fused
        SiLU and LayerNorm backward kernels (one kernel each; no autograd graph): six kernels
        per block instead of ~25 elementwise ops. :meth:`energy_and_grad_explicit` writes the
        same chain out op by op.
        """
        x = (h - self.mean) * self.inv_std
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for b in self.blocks:
            y = self._matmul(x, b.weight, transpose=True) + b.bias
            n, mu, rstd = torch.ops.aten.native_layer_norm(y, [y.shape[-1]], b.gamma, b.beta, self.eps)
            x = F.silu(n)
            saved.append((y, n, mu, rstd))
        energy = x @ self.head_weight + self.head_bias
        g = self.head_weight.expand_as(x)
        for b, (y, n, mu, rstd) in zip(reversed(self.blocks), reversed(saved)):
            g = torch.ops.aten.silu_backward(g, n)
            g = torch.ops.aten.native_layer_norm_backward(
                g, y, [y.shape[-1]], mu, rstd, b.gamma, b.beta, [True, False, False]
            )[0]
            g = self._matmul(g, b.weight, transpose=False)
        return energy, g * self.inv_std

    def energy_and_grad_explicit(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as :meth:`energy_and_grad`, every step of the formula written out."""
        x = (h - self.mean) * self.inv_std
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for b in self.blocks:
            y = self._matmul(x, b.weight, transpose=True) + b.bias
            centred = y - y.mean(dim=-1, keepdim=True)
            rstd = torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + self.eps)
            xhat = centred * rstd
            n = xhat * b.gamma + b.beta
            sig = torch.sigmoid(n)
            x = n * sig
            saved.append((xhat, rstd, sig * (1.0 + n * (1.0 - sig))))  # SiLU'(n)
        energy = x @ self.head_weight + self.head_bias
        g = self.head_weight.expand_as(x)
        for b, (xhat, rstd, dsilu) in zip(reversed(self.blocks), reversed(saved)):
            q = g * dsilu * b.gamma
            dy = (q - q.mean(dim=-1, keepdim=True) - xhat * (q * xhat).mean(dim=-1, keepdim=True)) * rstd
            g = self._matmul(dy, b.weight, transpose=False)
        return energy, g * self.inv_std


def steer_states(
    kernel: EnergyKernel,
    h: torch.Tensor,
    eta: float,
    steps: int,
    normalize: Normalize = "none",
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` updates ``h <- h - eta * d`` of float32 states ``h`` [N, D].

    ``d = grad E(h)`` (``normalize="none"``, the paper's formula) or ``grad E / ||grad E||`` per
    state (``"unit"``, the authors' code). With a ``threshold``, a state is updated at a step only
    while its energy is above it (no host sync: ``torch.where``). Returns the new states and a
    bool [N] telling which states were updated at the first step ("fired").
    """
    fired = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
    for step in range(steps):
        energy, grad = kernel.energy_and_grad(h)
        if normalize == "unit":
            grad = grad / grad.norm(dim=-1, keepdim=True).clamp_min(NORMALIZE_EPS)
        if threshold is None:
            h = h - eta * grad
        else:
            active = energy > threshold
            if step == 0:
                fired = active
            h = torch.where(active.unsqueeze(-1), h - eta * grad, h)
    return h, fired


def reference_steer(
    ebm: EnergyMLP,
    h: torch.Tensor,
    eta: float,
    steps: int,
    normalize: Normalize = "none",
    threshold: float | None = None,
) -> torch.Tensor:
    """The same update with autograd through the module itself (eval mode), one graph per step."""
    was_training = ebm.training
    ebm.eval()
    try:
        h = h.detach().float()
        for _ in range(steps):
            with torch.enable_grad(), torch.inference_mode(False):
                leaf = h.clone().requires_grad_(True)
                energy = ebm(leaf)
                (grad,) = torch.autograd.grad(energy.sum(), leaf)
            if normalize == "unit":
                grad = grad / grad.norm(dim=-1, keepdim=True).clamp_min(NORMALIZE_EPS)
            step = eta * grad
            if threshold is not None:
                step = step * (energy.detach() > threshold).unsqueeze(-1)
            h = h - step
        return h
    finally:
        ebm.train(was_training)


__all__ = ["EnergyKernel", "Normalize", "PackedBlock", "reference_steer", "steer_states"]
