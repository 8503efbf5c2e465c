"""Stage ``select``: score every layer's EBM on the validation split and pick the top-k layers.

Scores (see :mod:`eds.selection`): AUROC of the energy, good vs bad, and pairwise accuracy over
(good, bad) pairs that share ``select.pair_by``. Output: ``models/selection.json``
(``{"layers": [top-k], "scores": {layer: {...}}, "k", "metric", ...}``),
``reports/metrics/select.json`` (``best_val_auroc``, per-layer scores) for ``dvc metrics show``,
``reports/plots/layer_scores.csv`` (DVC plot) and ``reports/plots/layer_scores.png``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch

from eds.activation_store import ActivationStore
from eds.config import ConfigError, Params, check_layers
from eds.ebm import ebm_stem, load_ebm
from eds.records import atomic_write_bytes, atomic_write_json
from eds.selection import LayerScore, plot_layer_scores, rank_layers, score_layer, scores_csv, select_top_k
from eds.tracking import stage_run
from pipelines.paths import (
    ACTIVATIONS,
    EBM_DIR,
    LAYER_SCORES_DATA,
    LAYER_SCORES_PLOT,
    SELECT_METRICS,
    SELECTION,
)

log = logging.getLogger(__name__)


def ebm_layers() -> tuple[list[int], dict[str, Any]]:
    path = EBM_DIR / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no EBMs; run the train stage first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return [int(layer) for layer in manifest["layers"]], manifest


@torch.no_grad()
def score_layers(store: ActivationStore, layers: list[int], rows: list[int], pair_by: tuple[str, ...]) -> dict[int, LayerScore]:
    """Each layer's EBM scored on the given store rows."""
    good = np.array([store.index[r]["label"] == "good" for r in rows])
    groups = [tuple(store.index[r][field] for field in pair_by) for r in rows]
    scores = {}
    for layer in layers:
        artifact = load_ebm(EBM_DIR / ebm_stem(layer), hidden_size=store.hidden_size)
        if artifact.metadata.get("layer") != layer:
            raise ValueError(f"{EBM_DIR / ebm_stem(layer)}: metadata says layer {artifact.metadata.get('layer')}")
        states = torch.from_numpy(store.read_layer(layer, rows)).float()
        scores[layer] = score_layer(artifact.model(states).numpy(), good, groups)
    return scores


def run(params: Params) -> dict[str, Any]:
    cfg = params.select
    store = ActivationStore(ACTIVATIONS)
    check_layers(params, store.n_layers, keys=("select.k",))
    layers, ebms = ebm_layers()
    if cfg.k > len(layers):
        raise ConfigError(f"params.yaml: select.k: {cfg.k} is more than the {len(layers)} trained EBMs")
    val_rows = store.rows_where(split="val")
    with stage_run(params, "select") as run_log:
        scores = score_layers(store, layers, val_rows, tuple(cfg.pair_by))
        selected = select_top_k(scores, cfg.k, cfg.metric)
        best = rank_layers(scores, "auroc")[0]
        selection = {
            "layers": selected,
            "k": cfg.k,
            "metric": cfg.metric,
            "pair_by": list(cfg.pair_by),
            "split": "val",
            "scores": {str(layer): scores[layer].as_dict() for layer in sorted(scores)},
            "ebm_dir": str(EBM_DIR),
            "model": ebms.get("model"),
            "hidden_size": store.hidden_size,
            "train_data_sha256": ebms.get("train_data_sha256"),
        }
        atomic_write_json(SELECTION, selection)
        metrics = {
            "best_val_auroc": scores[best].auroc,
            "best_auroc_layer": best,
            "selected_mean_val_auroc": float(np.mean([scores[l].auroc for l in selected])),
            "layers": {f"{layer:02d}": _metric_entry(scores[layer]) for layer in sorted(scores)},
        }
        atomic_write_json(SELECT_METRICS, metrics)
        atomic_write_bytes(LAYER_SCORES_DATA, scores_csv(scores).encode("utf-8"))
        plot_layer_scores(scores, selected, LAYER_SCORES_PLOT)
        for layer in sorted(scores):
            entry = {f"layer_{layer:02d}/val_auroc": scores[layer].auroc}
            if scores[layer].pairwise_accuracy is not None:
                entry[f"layer_{layer:02d}/val_pairwise_accuracy"] = scores[layer].pairwise_accuracy
            run_log.log_metrics(entry)
            run_log.log_metrics({"val_auroc_by_layer": scores[layer].auroc}, step=layer)
        run_log.log_metrics({"best_val_auroc": scores[best].auroc})
        run_log.set_tags({"selected_layers": ",".join(map(str, selected))})
    log.info("select: layers %s (best val AUROC %.3f at layer %d)", selected, scores[best].auroc, best)
    return {"layers": selected, "best_val_auroc": round(scores[best].auroc, 4), "best_auroc_layer": best}


def _metric_entry(score: LayerScore) -> dict[str, float | int]:
    """DVC metrics are numbers: an undefined pairwise accuracy is left out (n_pairs says why)."""
    entry: dict[str, float | int] = {"auroc": score.auroc, "n_pairs": score.n_pairs}
    if score.pairwise_accuracy is not None:
        entry["pairwise_accuracy"] = score.pairwise_accuracy
    return entry
