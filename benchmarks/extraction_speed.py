"""Extraction throughput against a bare forward pass over the same batches, in the same run.

Usage: python benchmarks/extraction_speed.py [--prompts 64] [--batch 16] [--repeats 3] [--model ID]
Prints prompt tokens/s of three passes over identical pre-tokenised, left-padded batches and
writes reports/benchmarks/extraction_speed.json:

* ``bare``: ``model(**batch)``, the plain forward (full logits, default cache), no capture;
* ``bare_lean``: the forward the extractor runs (positions from the mask, no cache,
  ``logits_to_keep=1``), no capture: isolates the cost of the capture itself;
* ``extract``: :func:`eds.activations.last_token_states` (every layer's input at the last token,
  in one pass) plus the copy to host memory and the cast to the storage dtype.

Tokens are attended prompt tokens (padding excluded), identical for all three. The passes are
interleaved within each repeat (so machine load drifts hit all of them alike) after one
warm-up pass each; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eds import datasets
from eds.activations import encode, last_token_states, length_batches, position_ids, prepare_prompts
from eds.config import ModelConfig
from eds.models import LoadedModel, load_model
from eds.records import atomic_write_json

Batch = dict[str, torch.Tensor]


def passes(loaded: LoadedModel, dtype: np.dtype) -> dict[str, Callable[[Batch], None]]:
    model = loaded.model

    @torch.inference_mode()
    def bare(batch: Batch) -> None:
        model(**batch)

    @torch.inference_mode()
    def bare_lean(batch: Batch) -> None:
        mask = batch["attention_mask"]
        model(**batch, position_ids=position_ids(mask), use_cache=False, logits_to_keep=1)

    def extract(batch: Batch) -> None:
        states = last_token_states(model, batch["input_ids"], batch["attention_mask"])
        states.to("cpu", torch.float32).numpy().astype(dtype)

    return {"bare": bare, "bare_lean": bare_lean, "extract": extract}


def timed(fn: Callable[[Batch], None], batches: list[Batch], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--out", default="reports/benchmarks/extraction_speed.json")
    args = parser.parse_args(argv)
    loaded = load_model(ModelConfig(id=args.model))
    items = (datasets.load("demo_train") + datasets.load("demo_eval"))[: args.prompts]
    prepared = prepare_prompts(loaded, [item.prompt for item in items], 512)
    batches = [encode(loaded, [prepared[i].chat for i in idx]) for idx in length_batches([p.n_tokens for p in prepared], args.batch)]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    fns = passes(loaded, np.dtype(args.dtype))
    for fn in fns.values():
        fn(batches[0])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            rates[name].append(tokens / timed(fn, batches, loaded.device))
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "model": args.model,
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "prompts": len(prepared),
        "batch": args.batch,
        "prompt_tokens": tokens,
        "repeats": args.repeats,
        "tokens_per_s": median,
        "runs": rates,
        "ratio_extract_vs_bare": median["extract"] / median["bare"],
        "ratio_extract_vs_bare_lean": median["extract"] / median["bare_lean"],
    }
    print(f"model {args.model} on {loaded.device} ({torch.get_num_threads()} threads): "
          f"{len(prepared)} prompts, {tokens} prompt tokens, batch {args.batch}, {args.repeats} repeats")
    for name, value in median.items():
        print(f"{name:>10} {value:10.1f} tokens/s   runs {', '.join(f'{r:.1f}' for r in rates[name])}")
    print(f"extract / bare      = {result['ratio_extract_vs_bare']:.3f}x")
    print(f"extract / bare_lean = {result['ratio_extract_vs_bare_lean']:.3f}x (capture overhead alone)")
    atomic_write_json(Path(args.out), json.loads(json.dumps(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
