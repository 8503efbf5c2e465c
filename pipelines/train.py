"""Stage ``train``: one EBM per layer, trained contrastively (InfoNCE), all layers at once.

Reads the activation store (``data/activations``): the ``train`` rows train, the ``val`` rows
drive early stopping (see :mod:`eds.training`). Output: ``models/ebm/layer_XX.safetensors`` +
``layer_XX.json`` (spec, layer, hidden size, standardisation, sha256 of the training data, best
epoch and validation loss, model) and ``models/ebm/manifest.json``; ``reports/metrics/train.json``
for DVC; per-layer loss curves in MLflow (``layer_07/train_loss``, ``layer_07/val_loss``, step =
epoch).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import torch

from eds.activation_store import ActivationStore
from eds.config import Params
from eds.ebm import EBMSpec, ebm_stem, save_ebm
from eds.records import atomic_dir, atomic_write_json, file_sha256, fingerprint
from eds.tracking import stage_run
from eds.training import LayerResult, TrainSettings, build_ebm, train_layers
from pipelines.paths import ACTIVATIONS, EBM_DIR, TRAIN_METRICS

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto``: CUDA when present, else the CPU (without importing transformers via eds.models)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def settings_of(params: Params) -> TrainSettings:
    cfg = params.train
    return TrainSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        tau=cfg.tau,
        seed=cfg.seed,
        patience=cfg.patience,
        standardize=cfg.standardize,
        device=resolve_device(cfg.device),
        threads=cfg.threads,
    )


def training_data_hash(store: ActivationStore, rows: list[int]) -> str:
    """sha256 of the index rows used (id, label, split, position) and of the shards holding them."""
    used = [(store.index[r]["item_id"], store.index[r]["label"], store.index[r]["split"], r) for r in rows]
    return fingerprint({"rows": used, "shards": store.manifest["shards"]})


def layer_groups(n_layers: int, group: int | None) -> list[list[int]]:
    size = group or n_layers
    return [list(range(start, min(start + size, n_layers))) for start in range(0, n_layers, size)]


def run(params: Params) -> dict[str, Any]:
    cfg = params.train
    store = ActivationStore(ACTIVATIONS, verify=True)
    train_rows = store.rows_where(split="train")
    val_rows = store.rows_where(split="val")
    good = torch.tensor([row["label"] == "good" for row in store.index], dtype=torch.bool)
    spec = EBMSpec(input_dim=store.hidden_size, widths=tuple(cfg.widths), dropout=cfg.dropout)
    settings = settings_of(params)
    data_hash = training_data_hash(store, train_rows + val_rows)
    log.info("train: %d layers, %d train / %d val rows, widths %s, on %s",
             store.n_layers, len(train_rows), len(val_rows), list(spec.widths), settings.device)

    results: list[LayerResult] = []
    started = time.perf_counter()
    history: list[tuple[int, dict[str, float]]] = []
    with stage_run(params, "train") as run_log:
        def on_epoch(epoch: int, train_loss: dict[int, float], val_loss: dict[int, float]) -> None:
            metrics = {f"layer_{layer:02d}/train_loss": v for layer, v in train_loss.items()}
            metrics.update({f"layer_{layer:02d}/val_loss": v for layer, v in val_loss.items()})
            history.append((epoch, metrics))

        for group in layer_groups(store.n_layers, cfg.layer_group):
            features = torch.from_numpy(store.read(layers=group))
            results += train_layers(
                features, good, torch.tensor(train_rows), torch.tensor(val_rows), spec, settings, group, on_epoch
            )
        seconds = time.perf_counter() - started
        run_log.log_history(history)  # batched: one MLflow call per epoch costs seconds
        counts = {
            "train": {"good": int(good[train_rows].sum()), "bad": int((~good[train_rows]).sum())},
            "val": {"good": int(good[val_rows].sum()), "bad": int((~good[val_rows]).sum())},
        }
        manifest = save_all(results, spec, store, data_hash, counts, params)
        metrics = {  # deterministic (no duration): DVC hashes this file; the seconds go to MLflow and the log
            "n": counts,
            "best_val_loss": min(r.best_val_loss for r in results),
            "layers": {f"{r.layer:02d}": {"best_val_loss": r.best_val_loss, "best_epoch": r.best_epoch} for r in results},
        }
        atomic_write_json(TRAIN_METRICS, metrics)
        run_log.log_metrics({"seconds": seconds, "best_val_loss": metrics["best_val_loss"]})
        run_log.set_tags({"train_data_sha256": data_hash})
    log.info("train: %d EBMs in %.1f s", len(results), seconds)
    return {"n_layers": len(results), "seconds": round(seconds, 1), "train_data_sha256": data_hash,
            "files": len(manifest["files"])}


def save_all(
    results: list[LayerResult],
    spec: EBMSpec,
    store: ActivationStore,
    data_hash: str,
    counts: dict[str, dict[str, int]],
    params: Params,
) -> dict[str, Any]:
    """Write every layer's EBM and a manifest, replacing ``models/ebm`` as a whole."""
    cfg = params.train
    with atomic_dir(EBM_DIR) as folder:
        files: dict[str, str] = {}
        for result in results:
            model = build_ebm(spec, result.state_dict)
            metadata = {
                "layer": result.layer,
                "hidden_size": store.hidden_size,
                "model": store.manifest.get("model"),
                "position": store.manifest.get("position", "last_prompt_token"),
                "standardization": {
                    "applied": cfg.standardize,
                    "how": "per-dimension mean/std of the layer's train-split states, "
                    "stored as the mean/std buffers and applied inside forward()",
                },
                "train_data_sha256": data_hash,
                "n": counts,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "epochs_run": result.epochs_run,
                "training": {"loss": "infonce", **asdict(settings_of(params)), "activation_dtype": store.manifest["dtype"]},
            }
            save_ebm(folder / ebm_stem(result.layer), model, metadata)
            for suffix in (".safetensors", ".json"):
                name = ebm_stem(result.layer) + suffix
                files[name] = file_sha256(folder / name)
        manifest = {
            "layers": [r.layer for r in results],
            "hidden_size": store.hidden_size,
            "model": store.manifest.get("model"),
            "spec": {"input_dim": spec.input_dim, "widths": list(spec.widths), "dropout": spec.dropout},
            "train_data_sha256": data_hash,
            "files": files,
        }
        atomic_write_json(folder / "manifest.json", manifest)
    return manifest
