"""Artifact paths shared by the stages and dvc.yaml (a test checks that the two agree)."""

from __future__ import annotations

from pathlib import Path

RESPONSES = Path("data/responses")
LABELS = Path("data/labels.parquet")
CLASSIFY_METRICS = Path("reports/metrics/classify.json")
