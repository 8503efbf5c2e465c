"""Contrastive (InfoNCE) training of one EBM per layer, all layers at once.

**Loss** (the paper's, the authors' code): each good state ``g_i`` of a minibatch is contrasted
with every bad state ``b_j`` of the same minibatch, at temperature ``tau``::

    loss_i = E(g_i)/tau + log( exp(-E(g_i)/tau) + sum_j exp(-E(b_j)/tau) )

i.e. the cross-entropy of picking ``g_i`` out of ``{g_i} + bads`` with logits ``-E/tau``. Since
``loss_i = log(1 + exp(E(g_i)/tau + log sum_j exp(-E(b_j)/tau)))`` it is computed as
``softplus(E(g_i)/tau + logsumexp_j(-E(b_j)/tau))``: vectorised, overflow-free, and accurate
even when the loss is tiny (no cancellation between two large terms).
:func:`info_nce_reference` is the literal per-example formula, for tests.

**Minibatches** are balanced and use every example: an epoch has
``ceil(max(#good, #bad) / batch_size)`` steps of ``batch_size`` good and ``batch_size`` bad
rows; the larger class is visited once in a seeded random order, the smaller is cycled through
fresh permutations (the authors' code instead keeps only the first ``min(#good, #bad)`` of each).

**All layers at once.** The per-layer EBMs share a shape, so their parameters are stacked
(:func:`torch.func.stack_module_state`) and one :func:`torch.func.vmap` over
:func:`torch.func.functional_call` evaluates every layer's EBM on its own layer's states. The
layers are independent: the summed loss gives each layer's parameters exactly its own gradient,
and Adam is element-wise, so this equals training each layer alone, up to float rounding of the
batched matrix products. Every layer sees the same minibatch rows (they are rows of the same
prompts) and, with ``randomness="same"``, the same dropout mask per step, drawn from the
global RNG seeded in a forked RNG scope: a run is deterministic under its seed on the CPU, and
a single layer trained alone with the same seed draws the same batches and masks.

**Early stopping** is per layer: after each epoch the validation loss (every validation good
against every validation bad, dropout off) updates the layer's best checkpoint; a layer whose
loss has not improved for ``patience`` epochs is frozen at its best (later epochs no longer
change its result), and training ends when every layer is frozen or the epochs run out.

**Failures are loud.** A non-finite input value is an error naming its layer and row, and a
loss that becomes NaN or inf stops training with :class:`TrainingError` naming the epoch and
layers, so a diverged EBM is never returned (and the train stage saves nothing).

**Standardisation** (optional): per-layer, per-dimension mean and std of the training rows
(both classes), stored as the EBM's ``mean``/``std`` buffers and applied inside its forward,
so scoring and steering apply the identical transform.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from eds.ebm import EBMSpec, EnergyMLP
from eds.env import cpu_threads

EpochCallback = Callable[[int, dict[int, float], dict[int, float]], None]


class TrainingError(RuntimeError):
    """Training cannot produce a usable EBM (non-finite inputs, or a loss that became NaN/inf)."""


# ------------------------------------------------------------------------------ the loss


def info_nce_per_example(e_good: torch.Tensor, e_bad: torch.Tensor, tau: float) -> torch.Tensor:
    """``loss_i`` for energies ``e_good [..., G]`` and ``e_bad [..., B]``; returns ``[..., G]``.

    Leading dimensions (e.g. layers) are batch dimensions.
    """
    if e_good.shape[-1] == 0 or e_bad.shape[-1] == 0:
        raise ValueError("InfoNCE needs at least one good and one bad example")
    bad_lse = torch.logsumexp(-e_bad / tau, dim=-1, keepdim=True)
    return torch.nn.functional.softplus(e_good / tau + bad_lse)


def info_nce(e_good: torch.Tensor, e_bad: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean InfoNCE loss over the good examples; ``[...]`` for leading batch dimensions."""
    return info_nce_per_example(e_good, e_bad, tau).mean(dim=-1)


def info_nce_reference(e_good: Sequence[float], e_bad: Sequence[float], tau: float) -> list[float]:
    """The per-example formula written out literally (float64 Python loop), for tests."""
    out = []
    for g in e_good:
        denominator = math.exp(-g / tau) + sum(math.exp(-b / tau) for b in e_bad)
        out.append(g / tau + math.log(denominator))
    return out


# ------------------------------------------------------------------------------ sampling and init


def balanced_batches(
    good: torch.Tensor, bad: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(good rows, bad rows)`` minibatches, ``batch_size`` of each (see module doc)."""
    if len(good) == 0 or len(bad) == 0:
        raise ValueError(f"balanced batches need both classes (got {len(good)} good, {len(bad)} bad)")
    per_class = min(batch_size, max(len(good), len(bad)))
    steps = math.ceil(max(len(good), len(bad)) / per_class)
    good_stream = _stream(good, steps * per_class, generator)
    bad_stream = _stream(bad, steps * per_class, generator)
    return [
        (good_stream[s * per_class : (s + 1) * per_class], bad_stream[s * per_class : (s + 1) * per_class])
        for s in range(steps)
    ]


def _stream(rows: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """``total`` rows: consecutive seeded permutations of ``rows``, cut to length."""
    reps = math.ceil(total / len(rows))
    return torch.cat([rows[torch.randperm(len(rows), generator=generator)] for _ in range(reps)])[:total]


def layer_seed(seed: int, layer: int) -> int:
    """The initialisation seed of one layer's EBM: independent of which other layers train."""
    return (seed * 1_000_003 + layer * 7_919 + 17) % (2**63)


def init_model(spec: EBMSpec, seed: int, layer: int) -> EnergyMLP:
    """A freshly initialised EBM, seeded per layer, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, layer))
        return EnergyMLP(spec)


def standardization(states: torch.Tensor, chunk: int = 4096, min_std: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (population) of ``states [N, H]``, accumulated in float64.

    A dimension that is constant in training (std below ``min_std``, e.g. every input of layer 0
    at the same chat-template token) gets std 1: it carries no information, and dividing by a
    near-zero std would blow any deviation at steering time up by orders of magnitude.
    """
    total = torch.zeros(states.shape[-1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, states.shape[0], chunk):
        block = states[start : start + chunk].to(torch.float64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    n = max(states.shape[0], 1)
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0.0).sqrt()
    return mean.float(), torch.where(std < min_std, torch.ones_like(std), std).float()


# ------------------------------------------------------------------------------ the trainer


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 5e-5
    tau: float = 0.10
    seed: int = 0
    patience: int | None = 10
    standardize: bool = True
    device: str = "cpu"
    threads: int | None = None  # CPU threads while training (restored after); None: leave as is


@dataclass
class LayerResult:
    """The best-validation checkpoint of one layer's EBM and its curves (one value per epoch)."""

    layer: int
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def train_layers(
    features: torch.Tensor,
    good: torch.Tensor,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    spec: EBMSpec,
    settings: TrainSettings,
    layer_ids: Sequence[int] | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[LayerResult]:
    """Train one EBM per layer of ``features [L, N, H]`` (any float dtype, on the CPU).

    ``good [N]`` is True for desirable states; ``train_rows``/``val_rows`` index N.
    ``layer_ids`` names the L layers (for seeds and results; default ``0..L-1``).
    ``on_epoch(epoch, train_loss_by_layer, val_loss_by_layer)`` is called after every epoch.
    """
    with cpu_threads(settings.threads if torch.device(settings.device).type == "cpu" else None):
        return _train_layers(features, good, train_rows, val_rows, spec, settings, layer_ids, on_epoch)


def _train_layers(
    features: torch.Tensor,
    good: torch.Tensor,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    spec: EBMSpec,
    settings: TrainSettings,
    layer_ids: Sequence[int] | None,
    on_epoch: EpochCallback | None,
) -> list[LayerResult]:
    n_layers = features.shape[0]
    layer_ids = list(range(n_layers)) if layer_ids is None else list(layer_ids)
    if len(layer_ids) != n_layers:
        raise ValueError(f"{len(layer_ids)} layer ids for {n_layers} layers of features")
    if features.shape[-1] != spec.input_dim:
        raise ValueError(f"features have {features.shape[-1]} dims, the EBM spec reads {spec.input_dim}")
    check_finite_features(features, layer_ids)
    good = good.bool()
    train_good, train_bad = train_rows[good[train_rows]], train_rows[~good[train_rows]]
    val_good, val_bad = val_rows[good[val_rows]], val_rows[~good[val_rows]]
    for name, rows in (("train", (train_good, train_bad)), ("val", (val_good, val_bad))):
        if len(rows[0]) == 0 or len(rows[1]) == 0:
            raise ValueError(f"the {name} split needs good and bad examples (got {len(rows[0])} good, {len(rows[1])} bad)")
    device = torch.device(settings.device)

    models = [init_model(spec, settings.seed, layer) for layer in layer_ids]
    if settings.standardize:
        for model, layer_states in zip(models, features):
            model.set_standardization(*standardization(layer_states[train_rows]))
    params, buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def energy(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    batched = vmap(energy, in_dims=(0, 0, 0), randomness="same")
    fused = device.type in ("cpu", "cuda")  # one kernel over all stacked tensors: ~5x faster on the CPU
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.lr, fused=fused)

    def states(rows: torch.Tensor) -> torch.Tensor:
        return features[:, rows].to(device=device, dtype=torch.float32)

    x_val_good, x_val_bad = states(val_good), states(val_bad)
    best = {k: v.detach().clone() for k, v in params.items()}
    best_loss = torch.full((n_layers,), math.inf)
    best_epoch = torch.zeros(n_layers, dtype=torch.long)
    since_best = torch.zeros(n_layers, dtype=torch.long)
    frozen = torch.zeros(n_layers, dtype=torch.bool)
    train_curves: list[list[float]] = [[] for _ in layer_ids]
    val_curves: list[list[float]] = [[] for _ in layer_ids]
    generator = torch.Generator().manual_seed(settings.seed)
    epochs_run = 0

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for epoch in range(1, settings.epochs + 1):
            base.train()
            total = torch.zeros(n_layers, device=device)
            batches = balanced_batches(train_good, train_bad, settings.batch_size, generator)
            for g_rows, b_rows in batches:
                energies = batched(params, buffers, states(torch.cat([g_rows, b_rows])))
                losses = info_nce(energies[:, : len(g_rows)], energies[:, len(g_rows) :], settings.tau)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()
                total += losses.detach()
            train_loss = (total / len(batches)).cpu()
            base.eval()
            with torch.no_grad():
                val_loss = info_nce(batched(params, buffers, x_val_good), batched(params, buffers, x_val_bad), settings.tau).cpu()
            check_finite_loss(epoch, layer_ids, train_loss, val_loss, settings)
            epochs_run = epoch
            improved = (val_loss < best_loss) & ~frozen
            on_device = improved.to(device)
            for key, value in params.items():
                best[key][on_device] = value.detach()[on_device]
            best_loss = torch.where(improved, val_loss, best_loss)
            best_epoch = torch.where(improved, torch.tensor(epoch), best_epoch)
            since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
            if settings.patience is not None:
                frozen |= since_best >= settings.patience
            for i in range(n_layers):
                train_curves[i].append(float(train_loss[i]))
                val_curves[i].append(float(val_loss[i]))
            if on_epoch is not None:
                on_epoch(epoch, dict(zip(layer_ids, train_loss.tolist())), dict(zip(layer_ids, val_loss.tolist())))
            if bool(frozen.all()):
                break

    return [
        LayerResult(
            layer=layer,
            state_dict={
                **{k: v[i].detach().cpu().clone() for k, v in best.items()},
                **{k: v[i].cpu().clone() for k, v in buffers.items()},
            },
            best_epoch=int(best_epoch[i]),
            best_val_loss=float(best_loss[i]),
            epochs_run=epochs_run,
            train_loss=train_curves[i],
            val_loss=val_curves[i],
        )
        for i, layer in enumerate(layer_ids)
    ]


def check_finite_features(features: torch.Tensor, layer_ids: Sequence[int]) -> None:
    """Raise :class:`TrainingError` naming the layer and row of the first non-finite input value."""
    for i, layer_states in enumerate(features):  # one layer at a time: no [L, N, H] boolean copy
        finite = torch.isfinite(layer_states).all(dim=-1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten()
            raise TrainingError(
                f"non-finite activations at layer {layer_ids[i]}, row {int(rows[0])} ({len(rows)} rows of that layer "
                "affected); re-extract the activations"
            )


def check_finite_loss(
    epoch: int, layer_ids: Sequence[int], train_loss: torch.Tensor, val_loss: torch.Tensor, settings: TrainSettings
) -> None:
    """Stop on a NaN/inf loss (nothing is saved): a diverged EBM is not a result."""
    losses = zip(layer_ids, train_loss.tolist(), val_loss.tolist())
    bad = [layer for layer, train, val in losses if not (math.isfinite(train) and math.isfinite(val))]
    if bad:
        raise TrainingError(
            f"the InfoNCE loss became non-finite (NaN/inf) at epoch {epoch} for layer(s) {bad} "
            f"(lr {settings.lr:g}, tau {settings.tau:g}, standardize {settings.standardize}); lower train.lr, "
            "keep train.standardize on, or check the activations"
        )


def build_ebm(spec: EBMSpec, state_dict: dict[str, torch.Tensor]) -> EnergyMLP:
    """An :class:`EnergyMLP` in eval mode holding a trained state dict."""
    model = EnergyMLP(spec)
    model.load_state_dict(state_dict)
    return model.eval()


__all__ = [
    "LayerResult",
    "TrainSettings",
    "TrainingError",
    "balanced_batches",
    "build_ebm",
    "check_finite_features",
    "check_finite_loss",
    "info_nce",
    "info_nce_per_example",
    "info_nce_reference",
    "init_model",
    "layer_seed",
    "standardization",
    "train_layers",
]
