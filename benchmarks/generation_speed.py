"""Generation throughput of a model at several batch sizes, measured side by side in one run.

Usage: python benchmarks/generation_speed.py [--batches 1 8 32] [--new-tokens 32] [--model ID]
Prints a table and writes reports/benchmarks/generation_speed.json. Tokens counted are the
generated tokens up to and including EOS (padding after an early stop is not counted).
Each batch size runs `--repeats` times after one warm-up call; the median is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from eds import datasets
from eds.config import ModelConfig
from eds.generation import Decoding, generate
from eds.models import load_model
from eds.records import atomic_write_json


def measure(loaded, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> dict[str, float]:
    dec = Decoding(max_new_tokens=new_tokens, batch_size=batch)
    generate(loaded, prompts[:batch], dec)  # warm-up
    rates = []
    for r in range(repeats):
        chunk = prompts[r * batch : (r + 1) * batch] or prompts[:batch]
        start = time.perf_counter()
        outs = generate(loaded, chunk, dec)
        seconds = time.perf_counter() - start
        rates.append(sum(o.n_new_tokens for o in outs) / seconds)
    return {"batch": batch, "tokens_per_s": statistics.median(rates), "runs": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/benchmarks/generation_speed.json")
    args = parser.parse_args(argv)
    loaded = load_model(ModelConfig(id=args.model))
    items = datasets.load("demo_train") + datasets.load("demo_eval")
    prompts = [item.prompt for item in items]
    rows = [measure(loaded, prompts, b, args.new_tokens, args.repeats) for b in args.batches]
    base = rows[0]["tokens_per_s"]
    print(f"model {args.model} on {loaded.device} ({torch.get_num_threads()} threads), {args.new_tokens} new tokens")
    print(f"{'batch':>6} {'tokens/s':>10} {'vs batch ' + str(rows[0]['batch']):>12}")
    for row in rows:
        row["ratio_to_first"] = row["tokens_per_s"] / base
        print(f"{row['batch']:>6} {row['tokens_per_s']:>10.1f} {row['ratio_to_first']:>11.2f}x")
    atomic_write_json(
        Path(args.out),
        {
            "model": args.model,
            "device": str(loaded.device),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "new_tokens": args.new_tokens,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
