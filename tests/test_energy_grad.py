"""The closed-form EBM input gradient and the steering update, against autograd."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from eds.ebm import PAPER_WIDTHS, EBMSpec, EnergyMLP
from eds.energy_grad import EnergyKernel, reference_steer, steer_states


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls on a shared 2-core machine are much faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_ebm(dim: int, widths: tuple[int, ...], seed: int = 0, dropout: float = 0.0) -> EnergyMLP:
    """An EBM with non-trivial LayerNorm affine parameters and standardisation."""
    torch.manual_seed(seed)
    ebm = EnergyMLP(EBMSpec(dim, widths, dropout=dropout))
    with torch.no_grad():
        for block in ebm.blocks:
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.normal_(0.0, 0.2)
        ebm.set_standardization(torch.randn(dim) * 0.3, torch.rand(dim) + 0.5)
    return ebm.eval()


def autograd_grad(ebm: EnergyMLP, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = h.clone().requires_grad_(True)
    energy = ebm(leaf)
    (grad,) = torch.autograd.grad(energy.sum(), leaf)
    return energy.detach(), grad


def row_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-row relative difference ||a - b|| / ||b||."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.parametrize(
    ("dim", "widths"),
    [(8, (4,)), (32, (16, 8)), (64, (48, 32, 32, 16)), (576, (512, 256, 256, 128))],
)
@pytest.mark.parametrize("method", ["energy_and_grad", "energy_and_grad_explicit"])
def test_closed_form_gradient_equals_autograd(dim: int, widths: tuple[int, ...], method: str) -> None:
    ebm = random_ebm(dim, widths)
    h = torch.randn(24, dim) * 2.0
    energy, grad = getattr(EnergyKernel.from_module(ebm), method)(h)
    ref_energy, ref_grad = autograd_grad(ebm, h)
    assert row_rel(grad, ref_grad) < 1e-5
    torch.testing.assert_close(energy, ref_energy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(EnergyKernel.from_module(ebm).energy(h), ref_energy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", ["none", "unit"])
@pytest.mark.parametrize("threshold", [None, 0.0])
def test_update_equals_autograd_reference(normalize: str, threshold: float | None) -> None:
    ebm = random_ebm(64, (48, 32, 16), seed=1)
    h = torch.randn(32, 64)
    new, _ = steer_states(EnergyKernel.from_module(ebm), h, 0.3, 3, normalize, threshold)
    ref = reference_steer(ebm, h, 0.3, 3, normalize, threshold)
    assert not torch.equal(new, h)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)


def test_unit_normalisation_moves_each_state_by_eta() -> None:
    ebm = random_ebm(32, (16, 8), seed=2)
    kernel = EnergyKernel.from_module(ebm)
    h = torch.randn(10, 32)
    _, grad = kernel.energy_and_grad(h)
    unit, _ = steer_states(kernel, h, 0.25, 1, "unit")
    plain, _ = steer_states(kernel, h, 0.25, 1, "none")
    torch.testing.assert_close((h - unit).norm(dim=-1), torch.full((10,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h - plain, 0.25 * grad)
    # both go downhill for a small enough step
    assert (kernel.energy(unit) < kernel.energy(h)).all()


def test_threshold_leaves_low_energy_states_alone_and_reports_fires() -> None:
    ebm = random_ebm(32, (16, 8), seed=3)
    kernel = EnergyKernel.from_module(ebm)
    h = torch.randn(64, 32) * 2.0
    energy = kernel.energy(h)
    ordered = energy.sort().values
    threshold = float(ordered[31] + ordered[32]) / 2  # between two states, not on one
    new, fired = steer_states(kernel, h, 0.1, 2, "unit", threshold)
    below = energy <= threshold
    assert below.any() and (~below).any()
    assert torch.equal(new[below], h[below])  # bit-identical: untouched
    assert (new[~below] != h[~below]).any(dim=-1).all()
    assert torch.equal(fired, ~below)
    _, all_fired = steer_states(kernel, h, 0.1, 2, "unit")
    assert all_fired.all()


def test_dropout_is_off_whatever_the_module_mode() -> None:
    ebm = random_ebm(32, (16, 8), seed=4, dropout=0.5)
    h = torch.randn(8, 32)
    ref_energy, ref_grad = autograd_grad(ebm.eval(), h)
    ebm.train()
    kernel = EnergyKernel.from_module(ebm)
    energy, grad = kernel.energy_and_grad(h)
    again = kernel.energy_and_grad(h)[1]
    assert torch.equal(grad, again)
    assert row_rel(grad, ref_grad) < 1e-5
    ebm.train()
    reference_steer(ebm, h, 0.1, 1)
    assert ebm.training  # the reference restores the module's mode


@pytest.mark.parametrize("normalize", ["none", "unit"])
def test_bf16_fast_path_agrees_with_float32(normalize: str) -> None:
    """The paper's EBM shape on 4096-d inputs: bf16 weights, float32 accumulation, within 1e-2."""
    ebm = random_ebm(4096, PAPER_WIDTHS, seed=5)
    h = torch.randn(16, 4096) * 2.0
    eta = 0.5 if normalize == "unit" else 1.0
    ref, _ = steer_states(EnergyKernel.from_module(ebm), h, eta, 3, normalize)
    fast_kernel = EnergyKernel.from_module(ebm, weight_dtype=torch.bfloat16)
    assert fast_kernel.blocks[0].weight.dtype == torch.bfloat16
    fast, _ = steer_states(fast_kernel, h, eta, 3, normalize)
    assert fast.dtype == torch.float32
    assert row_rel(fast - h, ref - h) < 1e-2


def test_steering_step_compiles_without_graph_breaks() -> None:
    """fullgraph=True through dynamo + AOT autograd (inductor codegen: see the gated test below)."""
    ebm = random_ebm(16, (8, 8), seed=6)
    kernel = EnergyKernel.from_module(ebm)

    def step(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return steer_states(kernel, h, 0.5, 2, "unit", 0.0)

    h = torch.randn(4, 16)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, ref = compiled(h), step(h)
    torch.testing.assert_close(got[0], ref[0])
    assert torch.equal(got[1], ref[1])


@pytest.mark.skipif(
    not os.environ.get("EDS_TEST_INDUCTOR"),
    reason="inductor C++ codegen takes ~35 s on a 2-core CPU; set EDS_TEST_INDUCTOR=1 to run",
)
def test_steering_step_compiles_with_inductor() -> None:
    ebm = random_ebm(16, (8, 8), seed=6)
    kernel = EnergyKernel.from_module(ebm, weight_dtype=torch.bfloat16)

    def step(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return steer_states(kernel, h, 0.5, 2, "none", 0.0)

    h = torch.randn(4, 16)
    got, ref = torch.compile(step, fullgraph=True)(h), step(h)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
