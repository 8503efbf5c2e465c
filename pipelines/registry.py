"""The stage registry: one place that names every stage and the function that runs it."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eds import config

log = logging.getLogger(__name__)

Summary = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    description: str

    def function(self) -> Callable[[config.Params], Summary]:
        return importlib.import_module(self.module).run


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("split", "pipelines.split", "train / val / eval splits of the prompt pool, minus excluded prompts"),
        Stage("generate", "pipelines.generate", "greedy responses to the training prompts, in resumable shards"),
        Stage("classify", "pipelines.classify", "the judge C(X,Y): refusal, and good/bad labels per response"),
        Stage("extract", "pipelines.extract", "every layer's residual input at the last prompt token, sharded HDF5"),
        Stage("train", "pipelines.train", "one EBM per layer (InfoNCE), all layers trained at once"),
        Stage("select", "pipelines.select", "score each layer's EBM on the validation split, pick the top-k"),
        Stage("evaluate", "pipelines.evaluate", "every variant (unsteered, EDS, eta sweep, baselines) on every task"),
        Stage("report", "pipelines.report", "plots and the human report (reports/report.md, reports/report.html)"),
    )
}


def run_stage(name: str, params_path: str | Path = "params.yaml") -> Summary:
    """Validate params once, then run the stage; returns the stage's summary."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    params = config.load(params_path)
    started = time.perf_counter()
    summary = STAGES[name].function()(params)
    log.info("stage %s done in %.1f s", name, time.perf_counter() - started)
    return summary
