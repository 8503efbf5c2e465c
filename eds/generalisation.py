"""The generalisation matrix: EBMs trained on one source, scored on others.

For every **source** (a group of datasets of the activation store, e.g. OR-Bench-derived prompts,
or harmful-request sets), a quick EBM is trained on that source's ``train`` rows at one layer
(early stopping on the source's ``val`` rows; :func:`eds.training.train_layers`). Each EBM is then
scored on every **target**:

* the ``val`` rows of every source (the diagonal is in-distribution), and
* evaluation sets the EBMs never saw (e.g. XSTest, JBB), whose states are the same layer's input
  at the last prompt token and whose good/bad labels come from the *unsteered* model's judged
  responses (benign + comply or harmful + refuse = good).

The score is the AUROC of the energy as a detector of bad states (:func:`eds.selection.auroc`),
cheap and generation-free; a target with a single class has no AUROC (reported as such, with
its counts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from eds.ebm import EBMSpec, EnergyMLP
from eds.selection import auroc
from eds.training import TrainSettings, train_layers


@dataclass(frozen=True)
class Target:
    """States ``[N, H]`` (float32) and their labels (True = good)."""

    name: str
    states: np.ndarray
    good: np.ndarray

    @property
    def n_good(self) -> int:
        return int(self.good.sum())

    @property
    def n_bad(self) -> int:
        return int((~self.good).sum())


@dataclass(frozen=True)
class Cell:
    """One (source, target) entry of the matrix."""

    source: str
    target: str
    auroc: float | None
    n_good: int
    n_bad: int
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def train_source_ebm(
    states: np.ndarray, good: np.ndarray, train_rows: Sequence[int], val_rows: Sequence[int],
    spec: EBMSpec, settings: TrainSettings, layer: int,
) -> EnergyMLP:
    """An EBM trained on ``states[train_rows]`` with early stopping on ``states[val_rows]``."""
    features = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32))[None]
    result = train_layers(
        features, torch.from_numpy(np.asarray(good, dtype=bool)), torch.as_tensor(list(train_rows), dtype=torch.long),
        torch.as_tensor(list(val_rows), dtype=torch.long), spec, settings, layer_ids=[layer],
    )[0]
    model = EnergyMLP(spec)
    model.load_state_dict(result.state_dict)
    return model.eval()


@torch.no_grad()
def score_target(model: EnergyMLP, source: str, target: Target) -> Cell:
    """AUROC of ``model``'s energy on ``target`` (None with a note when a class is missing)."""
    if target.n_good == 0 or target.n_bad == 0:
        return Cell(source, target.name, None, target.n_good, target.n_bad, "one class only: no AUROC")
    energy = model(torch.from_numpy(np.ascontiguousarray(target.states, dtype=np.float32))).numpy()
    return Cell(source, target.name, auroc(energy[target.good], energy[~target.good]), target.n_good, target.n_bad)


def matrix(
    states: np.ndarray,
    good: np.ndarray,
    sources: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    targets: Sequence[Target],
    spec: EBMSpec,
    settings: TrainSettings,
    layer: int,
) -> list[Cell]:
    """Every source's EBM (trained on its (train rows, val rows) of ``states``) on every target.

    The val rows of each source are added as targets named ``<source> (val)``.
    """
    all_targets = [Target(f"{name} (val)", states[list(val)], good[list(val)]) for name, (_, val) in sources.items()]
    all_targets += list(targets)
    cells: list[Cell] = []
    for name, (train, val) in sources.items():
        missing = [f"{split} has no {cls}" for split, rows in (("train", train), ("val", val))
                   for cls, flag in (("good", True), ("bad", False)) if not np.any(good[list(rows)] == flag)]
        if not len(train) and not len(val):
            missing = ["none of its datasets is in the activation store"]
        if missing:
            cells += [Cell(name, t.name, None, t.n_good, t.n_bad, f"source not trainable: {', '.join(missing)}") for t in all_targets]
            continue
        model = train_source_ebm(states, good, train, val, spec, settings, layer)
        cells += [score_target(model, name, t) for t in all_targets]
    return cells


def as_table(cells: Sequence[Cell]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(sources, targets, AUROC rows) for tables and heatmaps, in first-seen order."""
    sources = list(dict.fromkeys(c.source for c in cells))
    targets = list(dict.fromkeys(c.target for c in cells))
    lookup = {(c.source, c.target): c.auroc for c in cells}
    return sources, targets, [[lookup.get((s, t)) for t in targets] for s in sources]


__all__ = ["Cell", "Target", "as_table", "matrix", "score_target", "train_source_ebm"]
