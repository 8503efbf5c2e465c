"""Stage ``evaluate``: every variant (unsteered, EDS, the eta sweep, each baseline) on every task.

Reads the model (params ``model``), the EBMs and the selected layers (``models/ebm``,
``models/selection.json``), the activation store (baseline vectors, generalisation matrix) and the
split artifact (held-out OR-Bench-Hard rows; the leak check). Writes:

* ``data/eval/responses/<variant>/<task>.parquet`` -- every response / score with its variant and
  judge, resumable per (variant, task) and re-judgeable without generating
  (``python -m pipelines.evaluate --rejudge``);
* ``reports/metrics.json`` -- ``<task>/<variant>/<metric>`` (+ ``_ci_low``, ``_ci_high``) and
  ``<task>/<variant>/n`` for DVC;
* ``reports/eval/results.json`` -- tasks (availability, counts, dropped training prompts),
  variants, scores with per-category breakdowns, paired differences to the unsteered model, the
  bar's verdict per EDS variant;
* ``reports/eval/generalisation.json`` -- the generalisation matrix;
* ``reports/plots/pareto.csv`` -- the Pareto points for ``dvc plots``.

MLflow: the stage run is the sweep's parent; each variant is a nested child run tagged with its
variant, eta, steps and layers and holding its per-task metrics, so variants line up in the
compare view.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eds.config import Params
from eds.env import cpu_threads
from eds.eval_tasks import TASKS, TaskItems, assert_disjoint, load_task
from eds.eval_variants import SteeringArtifacts, Variant, build_steerer, build_variants
from eds.eval_results import BASELINE, flat_metrics, pareto_csv, results_document, score_all, settings_of
from eds.evaluation import ResponseStore, TaskScore, needs_rejudge, pair_key, rejudge, run_task
from eds.judge import build_judge, label_pair
from eds.metrics import Rate
from eds.models import LoadedModel, describe, load_model, model_record
from eds.records import atomic_write_bytes, atomic_write_json, remove_stale_temps
from eds.splits import TRAINING_SPLITS, keys_of, load_exclusions, read_splits
from eds.tracking import StageRun, run_tags, stage_run
from pipelines.paths import (
    ACTIVATIONS,
    EBM_DIR,
    EVAL_CACHE,
    EVAL_DIR,
    EVAL_GENERALISATION,
    EVAL_METRICS,
    EVAL_RESPONSES,
    EVAL_RESULTS,
    PARETO_DATA,
    SELECTION,
    SPLITS,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ inputs


def read_selection(path: Path = SELECTION) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def training_keys(params: Params, split_rows: Sequence[Any]) -> set[str]:
    """Text keys of every prompt the EBMs (train/val splits) or the testbed (exclusion files) trained on."""
    keys = set(keys_of(split_rows, TRAINING_SPLITS))
    for values in load_exclusions(params.splits.exclude).values():
        keys |= set(values)
    return keys


def load_tasks(params: Params, split_rows: Sequence[Any], train_keys: set[str]) -> dict[str, TaskItems]:
    """Every configured task's items (or why it is unavailable); fails on a training-prompt leak."""
    tasks = {}
    for ref in params.evaluate.tasks:
        tasks[ref.name] = load_task(
            TASKS[ref.name], limit=ref.limit, split=ref.split, drop_training=ref.drop_training, source=params.data.source,
            root=params.data_root(), seed=params.project.seed, split_rows=split_rows, training_keys=train_keys,
        )
        loaded = tasks[ref.name]
        if loaded.available:
            log.info("task %s: %d items (%d training prompts dropped)", ref.name, len(loaded.items), loaded.dropped_training)
        else:
            log.warning("task %s: NOT AVAILABLE: %s", ref.name, loaded.unavailable)
    assert_disjoint(tasks, train_keys)
    return tasks


# ------------------------------------------------------------------------------ running


class LazyModel:
    """Loads the model on first use (a rerun with every pair stored loads nothing)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self._loaded: LoadedModel | None = None

    def get(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.params.model)
        return self._loaded


def run_variants(
    params: Params, variants: Sequence[Variant], tasks: Mapping[str, TaskItems], artifacts: SteeringArtifacts,
    model: LazyModel, force_rejudge: bool = False,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rows of every (variant, available task) pair: stored ones reused, missing ones produced."""
    cfg = params.classify.judge
    judge = build_judge(cfg.name, window=cfg.window, model_id=cfg.model_id, refusal_label=cfg.refusal_label,
                        batch_size=cfg.batch_size)
    settings = settings_of(params)
    store = ResponseStore(EVAL_RESPONSES)
    model_rec = model_record(params.model)
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for variant in variants:
        steerer = None
        parts = artifacts.fingerprint(variant)
        for name, loaded_task in tasks.items():
            if not loaded_task.available:
                continue
            task = loaded_task.task
            key = pair_key(task, loaded_task.items, variant.as_record(), parts, model_rec, settings.decoding_for(task),
                           settings.mc_batch_size)
            rows = store.load(variant.name, name, key)
            if rows is None:
                log.info("evaluate: %s on %s (%d items)", variant.name, name, len(loaded_task.items))
                if steerer is None:
                    steerer = build_steerer(variant, artifacts)
                rows = run_task(model.get(), task, loaded_task.items, steerer, variant.name, settings, judge)
                store.save(variant.name, name, key, rows, {"model": describe(params.model), "variant_record": variant.as_record(),
                                                           "judge": judge.name, "judge_version": judge.version})
            elif task.is_prompt_task and (force_rejudge or needs_rejudge(rows, judge)):
                log.info("evaluate: re-judging %s on %s with %s v%s", variant.name, name, judge.name, judge.version)
                rows = rejudge(task, rows, judge)
                store.save(variant.name, name, key, rows, {**(store.meta(variant.name, name) or {}), "judge": judge.name,
                                                           "judge_version": judge.version})
            out[(variant.name, name)] = rows
    for path in store.prune(set(out)):
        log.info("evaluate: removed %s (not in the current variants and tasks)", path)
    return out


# ------------------------------------------------------------------------------ generalisation


def prune_states(folder: Path, keep: set[Path]) -> list[Path]:
    """Remove cached target states (``states-*.npy``) not in ``keep``: the output holds only current ones."""
    stale = sorted(p for p in folder.glob("states-*.npy") if p not in keep)
    for path in stale:
        path.unlink()
    return stale


def generalisation(params: Params, tasks: Mapping[str, TaskItems], rows: Mapping[tuple[str, str], list[dict[str, Any]]],
                   model: LazyModel, layer: int) -> dict[str, Any]:
    """The matrix of :mod:`eds.generalisation` over the configured sources and targets."""
    from eds.activation_store import ActivationStore
    from eds.activations import extract_states, prepare_prompts
    from eds.ebm import EBMSpec
    from eds.generalisation import Target, matrix
    from eds.records import fingerprint
    from eds.training import TrainSettings

    cfg = params.evaluate.generalisation
    store = ActivationStore(ACTIVATIONS)
    states = store.read_layer(layer).astype(np.float32)
    good = np.array([r["label"] == "good" for r in store.index])
    sources = {}
    for group in cfg.sources:
        members = [r for r in store.index if r["dataset"] in group.datasets
                   and (group.categories is None or r.get("category") in group.categories)]
        sources[group.name] = ([r["row"] for r in members if r["split"] == "train"],
                               [r["row"] for r in members if r["split"] == "val"])
    targets = []
    notes = {}
    model_rec = model_record(params.model)
    used: set[Path] = set()
    for target_group in cfg.targets:
        target = target_group.name
        picked = [r for task in target_group.tasks if tasks.get(task) and tasks[task].available
                  for r in rows.get((BASELINE, task), [])]
        if not picked:
            notes[target] = "not available (no unsteered responses for its tasks)"
            continue
        prompts = [r["prompt"] for r in picked]
        key = fingerprint({"model": model_rec, "layer": layer, "prompts": prompts,
                           "max_prompt_tokens": params.evaluate.max_prompt_tokens})
        cache = EVAL_CACHE / f"states-{key[:16]}.npy"
        used.add(cache)
        if cache.is_file():
            target_states = np.load(cache, allow_pickle=False)
        else:
            loaded = model.get()
            prepared = prepare_prompts(loaded, prompts, params.evaluate.max_prompt_tokens)
            target_states = extract_states(loaded, prepared, params.evaluate.batch_size)[layer].numpy()
            buffer = io.BytesIO()
            np.save(buffer, target_states, allow_pickle=False)
            atomic_write_bytes(cache, buffer.getvalue())
        labels = np.array([label_pair(r["prompt_type"], bool(r["refused"])) == "good" for r in picked])
        targets.append(Target(target, target_states, labels))
    for path in prune_states(EVAL_CACHE, used):
        log.info("evaluate: removed %s (states of an older model or prompt set)", path)
    train = params.train
    spec = EBMSpec(input_dim=store.hidden_size, widths=tuple(train.widths), dropout=train.dropout)
    settings = TrainSettings(epochs=cfg.epochs, batch_size=train.batch_size, lr=train.lr, tau=train.tau, seed=train.seed,
                             patience=train.patience, standardize=train.standardize, device="cpu", threads=train.threads)
    cells = matrix(states, good, sources, targets, spec, settings, layer)
    return {"layer": layer, "cells": [c.as_dict() for c in cells], "notes": notes,
            "sources": [g.model_dump(mode="json") for g in cfg.sources],
            "targets": [g.model_dump(mode="json") for g in cfg.targets]}


# ------------------------------------------------------------------------------ tracking


def log_variant_runs(params: Params, run_log: StageRun, variants: Sequence[Variant],
                     scores: Mapping[str, Mapping[str, TaskScore]], deltas: Mapping[str, Mapping[str, Rate]]) -> None:
    """One nested MLflow run per variant under the stage's (the sweep's parent) run."""
    if run_log.run_id is None:
        return
    import mlflow

    base_tags = run_tags(params, "evaluate")
    for v in variants:
        metrics: dict[str, float] = {}
        for task, by_variant in scores.items():
            score = by_variant.get(v.name)
            if score is None:
                continue
            metrics.update({k.split("/", 1)[0] + "/" + k.split("/", 2)[2]: float(x) for k, x in score.flat().items()})
            delta = deltas.get(task, {}).get(v.name)
            if delta is not None and delta.value == delta.value:
                metrics[f"{task}/delta_vs_{BASELINE}"] = delta.value
        with mlflow.start_run(run_name=v.name, nested=True, tags={**base_tags, **v.tags(), "sweep_parent": run_log.run_id}):
            mlflow.log_params({f"variant.{k}": str(x)[:500] for k, x in v.as_record().items()})
            StageRun(mlflow.active_run().info.run_id).log_metrics(metrics)


# ------------------------------------------------------------------------------ the stage


def run(params: Params, force_rejudge: bool = False) -> dict[str, Any]:
    with cpu_threads(params.evaluate.threads):
        return _run(params, force_rejudge)


def check_layer_params(params: Params, activations: Path = ACTIVATIONS) -> None:
    """``steer.layers``, ``evaluate.ablation_layer`` and ``evaluate.generalisation.layer`` against the
    layer count of the activation store (the model's), before any model loads; no store: no check."""
    from eds.config import check_layers

    try:
        n_layers = int(json.loads((activations / "manifest.json").read_text(encoding="utf-8"))["n_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    check_layers(params, n_layers, keys=("steer.layers", "evaluate.ablation_layer", "evaluate.generalisation.layer"))


def _run(params: Params, force_rejudge: bool) -> dict[str, Any]:
    cfg = params.evaluate
    check_layer_params(params)
    selection = read_selection()
    if not selection and not params.steer.layers and set(cfg.variants) & {"eds", "mean_diff", "ablation"}:
        raise FileNotFoundError(f"{SELECTION}: no selected layers for the steered variants; run the select stage first")
    split_rows = read_splits(SPLITS) if SPLITS.is_file() else []
    train_keys = training_keys(params, split_rows)
    tasks = load_tasks(params, split_rows, train_keys)
    variants = build_variants(cfg, params.steer, selection.get("layers", []))
    artifacts = SteeringArtifacts(EBM_DIR, hidden_size=selection.get("hidden_size"), activations=ACTIVATIONS)
    model = LazyModel(params)
    with stage_run(params, "evaluate", {"variants": ",".join(v.name for v in variants)}) as run_log:
        rows = run_variants(params, variants, tasks, artifacts, model, force_rejudge)
        scores, deltas = score_all(params, variants, tasks, rows)
        metrics = flat_metrics(scores)
        results = results_document(params, variants, tasks, scores, deltas, selection)
        atomic_write_json(EVAL_METRICS, metrics)
        atomic_write_json(EVAL_RESULTS, results)
        atomic_write_bytes(PARETO_DATA, pareto_csv(params, variants, scores).encode("utf-8"))
        gen: dict[str, Any] = {"enabled": cfg.generalisation.enabled}
        if cfg.generalisation.enabled and BASELINE in [v.name for v in variants]:
            layer = cfg.generalisation.layer if cfg.generalisation.layer is not None else int(selection["layers"][0])
            gen.update(generalisation(params, tasks, rows, model, layer))
        elif cfg.generalisation.enabled:
            gen["note"] = f"needs the unsteered variant ({BASELINE!r}) for target labels"
        atomic_write_json(EVAL_GENERALISATION, gen)
        remove_stale_temps(EVAL_DIR, recursive=True)  # torn temporaries of a killed run: not part of the output
        log_variant_runs(params, run_log, variants, scores, deltas)
        run_log.log_metrics({"n_variants": len(variants), "n_tasks": len(scores)})
    unavailable = {n: t.unavailable for n, t in tasks.items() if not t.available}
    headline = {v["variant"]: v["met"] for v in results["verdicts"]}
    log.info("evaluate: %d variants x %d tasks; bar met: %s; not available: %s", len(variants), len(scores), headline, unavailable)
    return {"variants": [v.name for v in variants], "tasks": sorted(scores), "not_available": unavailable, "bar_met": headline}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.evaluate [--rejudge]``: the stage, optionally re-judging every stored response."""
    from eds import config

    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rejudge", action="store_true", help="re-judge every stored response (no generation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = config.load(args.params)
    except config.ConfigError as err:
        print(f"error: invalid params\n{err}", file=sys.stderr)
        return 2
    print(json.dumps(run(params, force_rejudge=args.rejudge), indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
