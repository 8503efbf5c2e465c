"""Artifact paths shared by the stages and dvc.yaml (a test checks that the two agree)."""

from __future__ import annotations

from pathlib import Path

SPLITS_DIR = Path("data/splits")
SPLITS = SPLITS_DIR / "splits.parquet"
SPLITS_MANIFEST = SPLITS_DIR / "manifest.json"
RESPONSES = Path("data/responses")
LABELS = Path("data/labels.parquet")
CLASSIFY_METRICS = Path("reports/metrics/classify.json")
ACTIVATIONS = Path("data/activations")
EBM_DIR = Path("models/ebm")
TRAIN_METRICS = Path("reports/metrics/train.json")
SELECTION = Path("models/selection.json")
SELECT_METRICS = Path("reports/metrics/select.json")
LAYER_SCORES_PLOT = Path("reports/plots/layer_scores.png")
LAYER_SCORES_DATA = Path("reports/plots/layer_scores.csv")
EVAL_DIR = Path("data/eval")
EVAL_RESPONSES = EVAL_DIR / "responses"
EVAL_CACHE = EVAL_DIR / "cache"
EVAL_METRICS = Path("reports/metrics.json")
EVAL_RESULTS_DIR = Path("reports/eval")
EVAL_RESULTS = EVAL_RESULTS_DIR / "results.json"
EVAL_GENERALISATION = EVAL_RESULTS_DIR / "generalisation.json"
PARETO_DATA = Path("reports/plots/pareto.csv")
PARETO_PLOT = Path("reports/plots/pareto.png")
TASKS_PLOT = Path("reports/plots/tasks.png")
GENERALISATION_PLOT = Path("reports/plots/generalisation.png")
REPORT_MD = Path("reports/report.md")
REPORT_HTML = Path("reports/report.html")
