"""Stage ``report``: the plots and the human report from the evaluate stage's results.

Reads ``reports/eval/results.json``, ``reports/eval/generalisation.json``, the stored responses
(for benign sample responses) and the params; writes ``reports/plots/pareto.png``,
``reports/plots/tasks.png``, ``reports/plots/generalisation.png``, ``reports/report.md`` and
``reports/report.html`` (self-contained; images by relative path). If
``reports/benchmarks/lm_eval_agreement.json`` exists (``benchmarks/lm_eval_agreement.py``), its
table is included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from eds.config import Params
from eds.evaluation import ResponseStore
from eds.metrics import Rate
from eds.records import atomic_write_bytes
from eds.report import ReportData, pick_samples, render_html, render_markdown
from eds.report_plots import Point, generalisation_heatmap, pareto_plot, task_bars
from pipelines.paths import (
    EVAL_GENERALISATION,
    EVAL_RESPONSES,
    EVAL_RESULTS,
    GENERALISATION_PLOT,
    PARETO_PLOT,
    REPORT_HTML,
    REPORT_MD,
    TASKS_PLOT,
)

log = logging.getLogger(__name__)
LM_EVAL_AGREEMENT = Path("reports/benchmarks/lm_eval_agreement.json")  # benchmarks/lm_eval_agreement.py, optional


def rate_of(entry: Mapping[str, Any] | None) -> Rate | None:
    if not entry or entry.get("value") is None:
        return None
    return Rate(float(entry["value"]), float(entry["ci_low"]), float(entry["ci_high"]), int(entry["n"]))


def pareto_points(results: Mapping[str, Any]) -> list[Point]:
    cfg = results["pareto"]
    scores = results["scores"]
    points = []
    for v in results["variants"]:
        x = rate_of(scores.get(cfg["x"], {}).get(v["name"]))
        if x is None:
            continue
        ys = {y: r for y in cfg["y"] if (r := rate_of(scores.get(y, {}).get(v["name"]))) is not None}
        label = rate_of(scores.get(cfg.get("label") or "", {}).get(v["name"]))
        points.append(Point(v["name"], v["kind"], v.get("eta"), x, ys, label))
    return points


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def make_plots(results: Mapping[str, Any], gen: Mapping[str, Any], out: Mapping[str, Path]) -> dict[str, str]:
    """Write the figures; returns caption -> path relative to the report folder."""
    rel = {}
    cfg = results["pareto"]
    points = pareto_points(results)
    pareto_plot(points, cfg["y"], cfg["x"], cfg.get("label"), out["pareto"])
    rel["Over-refusal compliance against harmful refusal: EDS eta sweep (line) and baselines; colour and label = "
        f"{cfg.get('label')} accuracy; bars = 95% intervals"] = "plots/pareto.png"
    order = [t for t in results.get("task_order") or list(results["scores"]) if t in results["scores"]]
    variants = [v["name"] for v in results["variants"]]
    scores = {t: {v: r for v in variants if (r := rate_of(results["scores"][t].get(v))) is not None} for t in order}
    metrics = {t: info["metric"] for t, info in results["tasks"].items()}
    task_bars(scores, metrics, out["tasks"])
    rel["Every task's metric per variant (95% intervals)"] = "plots/tasks.png"
    cells = gen.get("cells") or []
    if cells:
        sources = list(dict.fromkeys(c["source"] for c in cells))
        targets = list(dict.fromkeys(c["target"] for c in cells))
        lookup = {(c["source"], c["target"]): c["auroc"] for c in cells}
        generalisation_heatmap(sources, targets, [[lookup.get((s, t)) for t in targets] for s in sources], out["generalisation"])
        rel["Generalisation matrix: energy AUROC of an EBM trained on one source (rows) on other sets (columns)"] = "plots/generalisation.png"
    else:
        generalisation_heatmap(["(none)"], ["(none)"], [[None]], out["generalisation"])
    return rel


def collect_samples(results: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    store = ResponseStore(EVAL_RESPONSES)
    variants = {v["name"] for v in results["variants"]}
    samples: list[dict[str, Any]] = []
    if not {"none", "eds"} <= variants:
        return samples
    for task, info in results["tasks"].items():
        if not info["available"] or info["kind"] != "compliance":
            continue
        rows = {v: store.load(v, task) or [] for v in ("none", "eds")}
        samples += pick_samples(rows, n)
    return samples


def params_yaml(params: Params) -> str:
    dump = params.model_dump(mode="json")
    keep = {k: dump[k] for k in ("profile", "model", "classify", "steer", "evaluate") if k in dump}
    return yaml.safe_dump(keep, sort_keys=False, allow_unicode=True, width=110)


def run(params: Params) -> dict[str, Any]:
    results = _read_json(EVAL_RESULTS)
    if not results:
        raise FileNotFoundError(f"{EVAL_RESULTS}: no evaluation results; run the evaluate stage first")
    gen = _read_json(EVAL_GENERALISATION)
    plots = make_plots(results, gen, {"pareto": PARETO_PLOT, "tasks": TASKS_PLOT, "generalisation": GENERALISATION_PLOT})
    data = ReportData(
        results=results, generalisation=gen, samples=collect_samples(results, params.evaluate.samples), plots=plots,
        params_yaml=params_yaml(params),  # no timestamp: the report is a DVC output, equal for equal inputs
        lm_eval_agreement=_read_json(LM_EVAL_AGREEMENT) or None,
    )
    atomic_write_bytes(REPORT_MD, render_markdown(data).encode("utf-8"))
    atomic_write_bytes(REPORT_HTML, render_html(data).encode("utf-8"))
    verdicts = {v["variant"]: v["met"] for v in results.get("verdicts", [])}
    log.info("report: %s and %s written; bar met: %s", REPORT_MD, REPORT_HTML, verdicts)
    return {"report": str(REPORT_HTML), "plots": sorted(plots.values()), "bar_met": verdicts, "samples": len(data.samples)}
