"""Stage ``classify``: the paper's judge C(X, Y) over every generated response.

Output: ``data/labels.parquet`` (one row per response: prompt fields, response, ``refused``,
the judge's reason, ``label`` good/bad, judge name and version) and
``reports/metrics/classify.json`` with refusal rates per dataset and prompt type, which DVC
shows as metrics and MLflow logs as ``refusal_rate/<dataset>/<prompt_type>``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from eds.config import Params
from eds.judge import build_judge, label_pair
from eds.records import atomic_write_json, atomic_write_parquet, read_table_rows
from eds.tracking import stage_run
from pipelines.paths import CLASSIFY_METRICS, LABELS, RESPONSES

log = logging.getLogger(__name__)

LABEL_COLUMNS = (
    "item_id", "dataset", "prompt_type", "category", "prompt", "response", "model",
    "refused", "reason", "label", "judge", "judge_version",
)


def refusal_rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {prompt_type: {"refusal_rate": r, "n": n}}}`` plus an ``all`` dataset."""
    groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["prompt_type"])].append(bool(row["refused"]))
        groups[("all", row["prompt_type"])].append(bool(row["refused"]))
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (dataset, prompt_type), flags in sorted(groups.items()):
        out[dataset][prompt_type] = {"refusal_rate": sum(flags) / len(flags), "n": len(flags)}
    return dict(out)


def label_rows(params: Params, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    cfg = params.classify.judge
    judge = build_judge(
        cfg.name,
        window=cfg.window,
        model_id=cfg.model_id,
        refusal_label=cfg.refusal_label,
        batch_size=cfg.batch_size,
    )
    verdicts = judge.judge_batch([r["prompt"] for r in rows], [r["response"] for r in rows])
    labelled = []
    for row, verdict in zip(rows, verdicts, strict=True):
        out = {k: row.get(k) for k in LABEL_COLUMNS[:7]}
        out.update(
            refused=verdict.refused,
            reason=verdict.reason,
            label=label_pair(row["prompt_type"], verdict.refused),
            judge=judge.name,
            judge_version=judge.version,
        )
        labelled.append(out)
    return labelled


def run(params: Params) -> dict[str, Any]:
    rows = read_table_rows(RESPONSES)
    with stage_run(params, "classify") as run_log:
        labelled = label_rows(params, rows)
        atomic_write_parquet(LABELS, labelled)
        rates = refusal_rates(labelled)
        n_good = sum(r["label"] == "good" for r in labelled)
        metrics = {"n": len(labelled), "good_fraction": n_good / len(labelled), "refusal": rates}
        atomic_write_json(CLASSIFY_METRICS, metrics)
        flat = {
            f"refusal_rate/{dataset}/{ptype}": vals["refusal_rate"]
            for dataset, by_type in rates.items()
            for ptype, vals in by_type.items()
        }
        run_log.log_metrics({**flat, "n": len(labelled), "good_fraction": metrics["good_fraction"]})
        run_log.set_tags({"judge": labelled[0]["judge"] if labelled else "", "judge_version": labelled[0]["judge_version"] if labelled else ""})
    log.info("classify: %d responses, %d good", len(labelled), n_good)
    return {"n": len(labelled), "good": n_good, "refusal": rates}
