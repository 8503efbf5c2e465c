"""The report's figures (matplotlib, Agg backend, written atomically as PNG).

* :func:`pareto_plot` -- over-refusal compliance (x) against harmful refusal (y), one panel per
  refusal task; the EDS eta sweep as a line (points labelled with eta), every baseline as its own
  marker, the capability score (e.g. MMLU) as each point's colour and label; 95% intervals as
  error bars. Up and to the right is better.
* :func:`task_bars` -- every task's headline metric per variant, with intervals.
* :func:`generalisation_heatmap` -- the AUROC matrix of :mod:`eds.generalisation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eds.metrics import Rate
from eds.records import atomic_output

MARKERS = {"none": "o", "system_prompt": "s", "mean_diff": "^", "ablation": "D", "eds": "*"}


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: object, path: str | Path) -> None:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    _pyplot().close(fig)


@dataclass(frozen=True)
class Point:
    """One variant on the Pareto axes."""

    variant: str
    kind: str
    eta: float | None
    x: Rate
    y: Mapping[str, Rate]
    label: Rate | None = None


def _ok(r: Rate | None) -> bool:
    return r is not None and not math.isnan(r.value)


def _err(r: Rate) -> list[list[float]]:
    return [[max(r.value - r.ci_low, 0.0)], [max(r.ci_high - r.value, 0.0)]]


def _free_offset(ax: object, fig: object, x: float, y: float, chars: int, right: bool,
                 boxes: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """A label offset (points) next to (x, y) whose box overlaps no placed label; the box is recorded."""
    scale = 72.0 / fig.dpi  # type: ignore[attr-defined]
    px, py = (v * scale for v in ax.transData.transform((x, y)))  # type: ignore[attr-defined]
    width, height = 4.3 * chars, 9.0
    for step in range(12):
        dy = (1 if step % 2 == 0 else -1) * 10.0 * ((step + 1) // 2) + 3.0
        dx = -9.0 if right else 9.0
        left = px + dx - (width if right else 0.0)
        box = (left, py + dy - height / 2, left + width, py + dy + height / 2)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            boxes.append(box)
            return dx, dy
    boxes.append(box)
    return dx, dy


def pareto_plot(points: Sequence[Point], y_tasks: Sequence[str], x_task: str, label_task: str | None, path: str | Path) -> None:
    """See the module docstring; a point without data for a panel is left out of that panel."""
    plt = _pyplot()
    from matplotlib import cm, colors

    labels = [p.label.value for p in points if _ok(p.label)]
    low, high = min(labels, default=0.0), max(labels, default=1.0)
    if high - low < 0.05:  # a flat colour scale: centre a 5-point window on the values
        low, high = (low + high) / 2 - 0.025, (low + high) / 2 + 0.025
    norm = colors.Normalize(vmin=low, vmax=high)
    cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(y_tasks), figsize=(6.2 * len(y_tasks), 5.0), squeeze=False)
    for ax, y_task in zip(axes[0], y_tasks):
        usable = [p for p in points if _ok(p.x) and _ok(p.y.get(y_task))]
        eds = sorted((p for p in usable if p.kind == "eds"), key=lambda p: p.eta or 0.0)
        if len(eds) > 1:
            ax.plot([p.x.value for p in eds], [p.y[y_task].value for p in eds], "-", color="0.6", zorder=1, label="EDS eta sweep")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        boxes: list[tuple[float, float, float, float]] = []  # placed labels, in points
        for p in usable:
            y = p.y[y_task]
            colour = cmap(norm(p.label.value)) if _ok(p.label) else "0.5"
            ax.errorbar(p.x.value, y.value, xerr=_err(p.x), yerr=_err(y), fmt="none", ecolor="0.75", elinewidth=1, zorder=2)
            ax.scatter(p.x.value, y.value, marker=MARKERS.get(p.kind, "o"), s=170 if p.kind == "eds" else 80, color=colour,
                       edgecolor="black", linewidths=0.7, zorder=3, label=p.variant)
            text = p.variant + (f" ({label_task} {p.label.value:.2f})" if _ok(p.label) and label_task else "")
            right = p.x.value > 0.7  # labels point inwards so they stay inside the axes
            dx, dy = _free_offset(ax, fig, p.x.value, y.value, len(text), right, boxes)
            ax.annotate(text, (p.x.value, y.value), textcoords="offset points", xytext=(dx, dy), fontsize=7.5,
                        ha="right" if right else "left", va="center")
        ax.set_xlabel(f"{x_task} compliance (over-refusal; higher is better)")
        ax.set_ylabel(f"{y_task} refusal (higher is safer)")
        ax.set_title(f"{x_task} vs {y_task}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    if labels and label_task:
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[0]), label=f"{label_task} accuracy", shrink=0.85)
    _save(fig, path)


def task_bars(scores: Mapping[str, Mapping[str, Rate]], metrics: Mapping[str, str], path: str | Path) -> None:
    """``scores[task][variant]`` as grouped bars, one panel per task, with 95% intervals."""
    plt = _pyplot()
    tasks = list(scores)
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols) if tasks else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks):
        variants = list(scores[task])
        values = [scores[task][v].value if _ok(scores[task][v]) else 0.0 for v in variants]
        errs = [[max(r.value - r.ci_low, 0) if _ok(r) else 0 for r in scores[task].values()],
                [max(r.ci_high - r.value, 0) if _ok(r) else 0 for r in scores[task].values()]]
        ax.bar(range(len(variants)), values, yerr=errs, color=[f"C{i % 10}" for i in range(len(variants))], capsize=3)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: {metrics.get(task, '')}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def generalisation_heatmap(sources: Sequence[str], targets: Sequence[str], values: Sequence[Sequence[float | None]],
                           path: str | Path) -> None:
    """AUROC per (source, target); empty cells are grey and marked n/a."""
    plt = _pyplot()
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float).reshape(len(sources), len(targets))
    fig, ax = plt.subplots(figsize=(1.3 * max(len(targets), 2) + 2.5, 0.7 * max(len(sources), 1) + 2.0))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(sources)):
        for j in range(len(targets)):
            ax.text(j, i, "n/a" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels(targets, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(sources)))
    ax.set_yticklabels(sources, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("EBM trained on")
    ax.set_title("Energy AUROC (bad vs good states)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    _save(fig, path)


__all__ = ["MARKERS", "Point", "generalisation_heatmap", "pareto_plot", "task_bars"]
