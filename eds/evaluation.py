"""Running evaluation tasks under a steerer, storing the responses, and scoring them.

One (variant, task) pair is the unit of work and of resumption: its rows are written atomically
to ``<root>/<variant>/<task>.parquet`` with a sidecar ``<task>.json`` holding the fingerprint of
everything that made them (task items, variant and its artifacts, model, decoding). A rerun
reuses a pair whose fingerprint matches, so a killed stage redoes at most the pair it was in.

Generated responses are stored with the judge that labelled them (``judge``, ``judge_version``);
when the configured judge differs (or a re-judge is forced), :func:`rejudge` re-labels the stored
responses without generating again.

All tasks of a variant run under the same steering semantics: generation and log-likelihood
scoring both steer the last prompt token and every position after it (see
:mod:`eds.scoring`); the system-prompt baseline changes the chat (and, for multiple choice, the
lm-eval context).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eds.answers import gsm8k_equal, gsm8k_extract, math_equal, math_extract
from eds.datasets import ChoiceItem, Item, MathItem, PromptItem
from eds.eval_tasks import EvalTask, category_of, item_text
from eds.generation import Decoding
from eds.judge import Judge
from eds.metrics import Rate, by_group, flat_metrics, rate
from eds.models import LoadedModel
from eds.multiple_choice import score_choices
from eds.records import atomic_write_json, atomic_write_parquet, fingerprint, read_parquet_rows
from eds.scoring import steered_generate
from eds.steering import Steerer

Row = dict[str, Any]


@dataclass(frozen=True)
class EvalSettings:
    """Decoding and scoring settings shared by every task of a run."""

    decoding: Decoding = Decoding(max_new_tokens=48)
    math_decoding: Decoding = Decoding(max_new_tokens=128)
    mc_batch_size: int = 16
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def decoding_for(self, task: EvalTask) -> Decoding:
        return self.math_decoding if task.kind == "math" else self.decoding


# ------------------------------------------------------------------------------ running


def _base_row(task: EvalTask, item: Item, variant: str, model: str) -> Row:
    return {
        "item_id": item.item_id,
        "task": task.name,
        "dataset": item.dataset,
        "variant": variant,
        "category": category_of(item),
        "prompt": item_text(item),
        "model": model,
    }


def run_prompt_task(
    loaded: LoadedModel, task: EvalTask, items: Sequence[PromptItem], steerer: Steerer, variant: str,
    decoding: Decoding, judge: Judge, on_batch: Callable[[int], None] | None = None,
) -> list[Row]:
    """Generate a response to every prompt under ``steerer``, then judge it."""
    outs = steered_generate(loaded, [i.prompt for i in items], decoding, steerer, on_batch=on_batch)
    rows = []
    for item, out in zip(items, outs):
        row = _base_row(task, item, variant, loaded.name)
        row.update(prompt_type=item.prompt_type, response=out.text, n_prompt_tokens=out.n_prompt_tokens,
                   n_new_tokens=out.n_new_tokens, truncated=out.truncated)
        rows.append(row)
    return judge_rows(rows, judge)


def judge_rows(rows: Sequence[Row], judge: Judge) -> list[Row]:
    """``refused``, ``reason``, ``judge``, ``judge_version`` (re)computed for every row."""
    verdicts = judge.judge_batch([r["prompt"] for r in rows], [r["response"] for r in rows])
    return [{**row, "refused": v.refused, "reason": v.reason, "judge": judge.name, "judge_version": judge.version}
            for row, v in zip(rows, verdicts, strict=True)]


def needs_rejudge(rows: Sequence[Row], judge: Judge) -> bool:
    return any(r.get("judge") != judge.name or r.get("judge_version") != judge.version for r in rows)


def rejudge(task: EvalTask, rows: Sequence[Row], judge: Judge) -> list[Row]:
    """Re-label stored responses of a prompt task (other tasks have no judge: returned as is)."""
    return judge_rows(rows, judge) if task.is_prompt_task and rows else list(rows)


def run_math_task(
    loaded: LoadedModel, task: EvalTask, items: Sequence[MathItem], steerer: Steerer, variant: str,
    decoding: Decoding, on_batch: Callable[[int], None] | None = None,
) -> list[Row]:
    """Generate a solution to every problem under ``steerer``; extract and check the final answer."""
    outs = steered_generate(loaded, [task.math_prompt(i.question) for i in items], decoding, steerer, on_batch=on_batch)
    rows = []
    for item, out in zip(items, outs):
        row = _base_row(task, item, variant, loaded.name)
        row.update(response=out.text, gold=item.answer, n_new_tokens=out.n_new_tokens, truncated=out.truncated)
        rows.append(score_math_row(task, row))
    return rows


def score_math_row(task: EvalTask, row: Row) -> Row:
    """``extracted`` and ``correct`` of one math row (GSM8K: last number; MATH: last boxed)."""
    if task.answer_format == "boxed":
        extracted = math_extract(row["response"])
        correct = math_equal(extracted, row["gold"])
    else:
        extracted = gsm8k_extract(row["response"])
        correct = gsm8k_equal(extracted, row["gold"])
    return {**row, "extracted": extracted, "correct": bool(correct)}


def run_mc_task(
    loaded: LoadedModel, task: EvalTask, items: Sequence[ChoiceItem], steerer: Steerer, variant: str, batch_size: int
) -> list[Row]:
    """Log-likelihood multiple choice under ``steerer`` (lm-eval format of the task)."""
    results = score_choices(loaded, items, task.mc_format or "mmlu", steerer, batch_size)
    rows = []
    for item, res in zip(items, results):
        row = _base_row(task, item, variant, loaded.name)
        row.update(choices=json.dumps(list(item.choices), ensure_ascii=False), answer=item.answer,
                   logliks=json.dumps([round(x, 6) for x in res.logliks]), pred=res.pred, pred_norm=res.pred_norm,
                   correct=res.correct, correct_norm=res.correct_norm)
        rows.append(row)
    return rows


def run_task(
    loaded: LoadedModel, task: EvalTask, items: Sequence[Item], steerer: Steerer, variant: str,
    settings: EvalSettings, judge: Judge, on_batch: Callable[[int], None] | None = None,
) -> list[Row]:
    """The rows of one (variant, task) pair."""
    if task.is_prompt_task:
        return run_prompt_task(loaded, task, items, steerer, variant, settings.decoding, judge, on_batch)  # type: ignore[arg-type]
    if task.kind == "math":
        return run_math_task(loaded, task, items, steerer, variant, settings.math_decoding, on_batch)  # type: ignore[arg-type]
    rows = run_mc_task(loaded, task, items, steerer, variant, settings.mc_batch_size)  # type: ignore[arg-type]
    if on_batch is not None:
        on_batch(len(rows))
    return rows


# ------------------------------------------------------------------------------ storage


class ResponseStore:
    """``<root>/<variant>/<task>.parquet`` + ``.json`` sidecars (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, variant: str, task: str) -> Path:
        return self.root / variant / f"{task}.parquet"

    def meta_path(self, variant: str, task: str) -> Path:
        return self.path(variant, task).with_suffix(".json")

    def meta(self, variant: str, task: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path(variant, task).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def load(self, variant: str, task: str, key: str | None = None) -> list[Row] | None:
        """The stored rows, if complete and (when ``key`` is given) made from the same inputs."""
        meta = self.meta(variant, task)
        path = self.path(variant, task)
        if meta is None or not path.is_file() or (key is not None and meta.get("key") != key):
            return None
        try:
            rows = read_parquet_rows(path)
        except Exception:  # a torn or foreign file: regenerate
            return None
        return rows if len(rows) == meta.get("n") else None

    def save(self, variant: str, task: str, key: str, rows: Sequence[Row], extra: Mapping[str, Any] | None = None) -> None:
        """Rows first, then the sidecar: a kill between the two leaves a pair that is redone."""
        atomic_write_parquet(self.path(variant, task), list(rows))
        # No wall-clock time here: data/eval is a DVC output, and a resumed run must hash like a fresh one.
        meta = {"key": key, "variant": variant, "task": task, "n": len(rows), **(extra or {})}
        atomic_write_json(self.meta_path(variant, task), meta)


    def prune(self, keep: set[tuple[str, str]]) -> list[Path]:
        """Delete the stored pairs not in ``keep`` (variant, task): what a former configuration left.

        ``data/eval`` persists across runs (resume), so without this its DVC hash would depend on
        the history of configurations rather than on the current one.
        """
        removed = []
        for path in sorted(self.root.glob("*/*.parquet")) + sorted(self.root.glob("*/*.json")):
            if (path.parent.name, path.stem) not in keep:
                path.unlink()
                removed.append(path)
        for folder in self.root.glob("*/"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed


def pair_key(task: EvalTask, items: Sequence[Item], variant: Mapping[str, Any], artifacts: Mapping[str, Any],
             model: Mapping[str, Any], decoding: Decoding, mc_batch_size: int) -> str:
    """Fingerprint of everything a (variant, task) pair's responses depend on (not the judge)."""
    return fingerprint({
        "task": {"name": task.name, "kind": task.kind, "mc_format": task.mc_format, "answer_format": task.answer_format,
                 "prompt": task.math_prompt("{q}") if task.kind == "math" else None},
        "items": [[i.item_id, item_text(i)] for i in items],
        "variant": dict(variant),
        "artifacts": dict(artifacts),
        "model": dict(model),
        "decoding": decoding.as_record() if task.generates else {"mc_batch_size": mc_batch_size},
    })


# ------------------------------------------------------------------------------ scoring


@dataclass
class TaskScore:
    """The metrics of one (variant, task) pair."""

    task: str
    variant: str
    metric: str
    value: Rate
    extra: dict[str, Rate] = field(default_factory=dict)
    categories: dict[str, Rate] = field(default_factory=dict)

    def flat(self) -> dict[str, float | int]:
        """``task/variant/metric`` (+ ``_ci_low``, ``_ci_high``) and ``task/variant/n``."""
        prefix = f"{self.task}/{self.variant}"
        out = flat_metrics(prefix, self.metric, self.value)
        for name, value in self.extra.items():
            out.update({k: v for k, v in flat_metrics(prefix, name, value).items() if not k.endswith("/n")})
        return out


def outcomes(task: EvalTask, rows: Sequence[Row]) -> list[bool]:
    """The per-row 0/1 outcome of the task's metric."""
    if task.kind == "compliance":
        return [not bool(r["refused"]) for r in rows]
    if task.kind == "refusal":
        return [bool(r["refused"]) for r in rows]
    return [bool(r["correct"]) for r in rows]


def score_task(task: EvalTask, variant: str, rows: Sequence[Row], settings: EvalSettings) -> TaskScore:
    """Rate with bootstrap interval, per-category rates, and ``accuracy_norm`` for ARC-style tasks."""
    kw = {"samples": settings.bootstrap_samples, "confidence": settings.confidence, "seed": settings.seed}
    values = outcomes(task, rows)
    extra = {}
    if task.kind == "multiple_choice" and task.mc_format == "arc":
        extra["accuracy_norm"] = rate([bool(r["correct_norm"]) for r in rows], **kw)
    categories = by_group(values, [r.get("category") for r in rows], **kw) if rows else {}
    return TaskScore(task.name, variant, task.metric, rate(values, **kw), extra, categories)


def refusal_examples(rows: Sequence[Row], benign_only: bool = True) -> list[Row]:
    """Rows safe to show in a report: benign prompts only (never a harmful prompt's response)."""
    return [r for r in rows if not benign_only or r.get("prompt_type") == "benign"]


__all__ = [
    "EvalSettings",
    "ResponseStore",
    "TaskScore",
    "judge_rows",
    "needs_rejudge",
    "outcomes",
    "pair_key",
    "refusal_examples",
    "rejudge",
    "run_math_task",
    "run_mc_task",
    "run_prompt_task",
    "run_task",
    "score_math_row",
    "score_task",
]
