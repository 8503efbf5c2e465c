"""What the evaluate stage computes from the responses: scores, paired differences, the flat
metrics for DVC, the Pareto points, and the results document the report is rendered from.

``scores[task][variant]`` is a :class:`eds.evaluation.TaskScore` (rate, 95% interval, per-category
rates); ``deltas[task][variant]`` is the paired bootstrap difference to the unsteered model
(:data:`BASELINE`), over the items both answered; the verdict of every EDS variant against
``evaluate.bar`` is computed here too (:func:`eds.verdict.verdict`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eds.config import Params
from eds.eval_tasks import TaskItems
from eds.eval_variants import Variant
from eds.evaluation import EvalSettings, TaskScore, outcomes, score_task
from eds.generation import Decoding
from eds.metrics import Rate, paired_difference
from eds.models import describe
from eds.verdict import verdict

BASELINE = "none"


def settings_of(params: Params) -> EvalSettings:
    cfg = params.evaluate
    return EvalSettings(
        decoding=Decoding(max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size),
        math_decoding=Decoding(max_new_tokens=cfg.math_max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                               batch_size=cfg.batch_size),
        mc_batch_size=cfg.mc_batch_size,
        bootstrap_samples=cfg.bootstrap_samples,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )


def _aligned(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_id = {r["item_id"]: r for r in b}
    pairs = [(r, by_id[r["item_id"]]) for r in a if r["item_id"] in by_id]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def score_all(params: Params, variants: Sequence[Variant], tasks: Mapping[str, TaskItems],
              rows: Mapping[tuple[str, str], list[dict[str, Any]]]) -> tuple[dict[str, dict[str, TaskScore]], dict[str, dict[str, Rate]]]:
    """``scores[task][variant]`` and paired ``deltas[task][variant]`` (variant minus unsteered)."""
    settings = settings_of(params)
    scores: dict[str, dict[str, TaskScore]] = {}
    deltas: dict[str, dict[str, Rate]] = {}
    for name, loaded_task in tasks.items():
        if not loaded_task.available:
            continue
        task = loaded_task.task
        scores[name] = {v.name: score_task(task, v.name, rows[(v.name, name)], settings) for v in variants}
        base = rows.get((BASELINE, name))
        if base is None:
            continue
        deltas[name] = {}
        for v in variants:
            mine, theirs = _aligned(rows[(v.name, name)], base)
            if mine:
                deltas[name][v.name] = paired_difference(
                    np.asarray(outcomes(task, mine), float), np.asarray(outcomes(task, theirs), float),
                    settings.bootstrap_samples, settings.confidence, settings.seed,
                )
    return scores, deltas


def flat_metrics(scores: Mapping[str, Mapping[str, TaskScore]]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for by_variant in scores.values():
        for score in by_variant.values():
            out.update(score.flat())
    return out


def pareto_csv(params: Params, variants: Sequence[Variant], scores: Mapping[str, Mapping[str, TaskScore]]) -> str:
    """One row per (variant, refusal task): compliance on pareto.x, refusal, capability."""
    cfg = params.evaluate.pareto
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "kind", "eta", "steps", "y_task", "compliance", "refusal", "capability"])
    for v in variants:
        x = scores.get(cfg.x, {}).get(v.name)
        label = scores.get(cfg.label or "", {}).get(v.name)
        for y_task in cfg.y:
            y = scores.get(y_task, {}).get(v.name)
            if x is None or y is None:
                continue
            writer.writerow([v.name, v.kind, "" if v.eta is None else v.eta, "" if v.steps is None else v.steps, y_task,
                             _num(x.value.value), _num(y.value.value), "" if label is None else _num(label.value.value)])
    return buffer.getvalue()


def _num(value: float) -> str:
    return "" if value != value else f"{value:.6f}"


def results_document(
    params: Params, variants: Sequence[Variant], tasks: Mapping[str, TaskItems], scores: Mapping[str, Mapping[str, TaskScore]],
    deltas: Mapping[str, Mapping[str, Rate]], selection: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the report needs, as JSON (rates as dicts; ``null`` for undefined)."""
    cfg = params.evaluate
    values = {t: {v: s.value for v, s in by_v.items()} for t, by_v in scores.items()}
    verdicts = [verdict(v.name, values, deltas, cfg.bar.compliance, cfg.bar.refusal, cfg.bar.tolerance, BASELINE).as_dict()
                for v in variants if v.kind == "eds"]
    judge = params.classify.judge
    return {
        "model": describe(params.model),
        "judge": {"name": judge.name, "window": judge.window, "model_id": judge.model_id},
        "profile": params.profile,
        "selected_layers": selection.get("layers", []),
        "baseline": BASELINE,
        "task_order": list(tasks),
        "tasks": {
            name: {
                "description": t.task.description, "dataset": t.task.dataset, "kind": t.task.kind, "metric": t.task.metric,
                "category": t.task.category, "available": t.available, "unavailable": t.unavailable,
                "n": len(t.items), "dropped_training": t.dropped_training,
            }
            for name, t in tasks.items()
        },
        "variants": [v.as_record() for v in variants],
        "scores": {
            task: {
                variant: {"metric": s.metric, **s.value.as_dict(), "extra": {k: r.as_dict() for k, r in s.extra.items()},
                          "categories": {c: r.as_dict() for c, r in s.categories.items()}}
                for variant, s in by_variant.items()
            }
            for task, by_variant in scores.items()
        },
        "deltas": {task: {v: r.as_dict() for v, r in by_v.items()} for task, by_v in deltas.items()},
        "verdicts": verdicts,
        "pareto": cfg.pareto.model_dump(mode="json"),
        "bar": cfg.bar.model_dump(mode="json"),
        "params": {"evaluate": cfg.model_dump(mode="json"), "steer": params.steer.model_dump(mode="json")},
    }


__all__ = ["BASELINE", "flat_metrics", "pareto_csv", "results_document", "score_all", "settings_of"]
