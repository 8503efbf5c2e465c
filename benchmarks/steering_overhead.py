"""Steered vs unsteered greedy generation throughput, measured side by side in one run.

Usage:
    python benchmarks/steering_overhead.py --shape llama8b            # GPU: Llama-3.1-8B shape, random bf16
    python benchmarks/steering_overhead.py --shape embedded           # CPU: the embedded SmolLM2-135M
    python benchmarks/steering_overhead.py --shape tiny               # seconds: smoke test of the harness

Shapes (defaults; every one can be overridden on the command line):

| shape    | model                                   | steered layers | EBM widths            | batches    | prompt / new |
|----------|-----------------------------------------|----------------|-----------------------|------------|--------------|
| llama8b  | LlamaConfig of Llama-3.1-8B, random bf16 | 15 (8..22)     | 2048,1024,1024,512    | 1, 16, 64  | 128 / 64     |
| embedded | SmolLM2-135M-Instruct (eds.models)       | 5 (10..14)     | 512,256,256,128       | 1, 8       | 64 / 32      |
| tiny     | 2-layer random Llama, hidden 64          | 2              | 32,16                 | 1, 4       | 16 / 8       |

Prompts are random token ids (every row the same length), greedy, ``min_new_tokens`` =
``max_new_tokens`` so steered and unsteered runs produce the same number of tokens. EBMs are
random (speed does not depend on their values), ``steps`` = 3, ``normalize`` = unit.
Modes: ``dynamic`` (HF dynamic cache, eager) and ``static`` (``cache_implementation="static"``:
on CUDA, HF compiles the decode step itself, CUDA graphs included). ``--impl autograd`` steers
with autograd through the float32 EBM module in the hook (the authors' approach) for comparison.
For every (mode, batch): one warm-up of each variant, then ``--repeats`` alternating timed runs;
the median is reported (``ratio``), and the best-of-repeats ratio (``ratio_best``), which other
jobs on a shared machine disturb less; on CPU also ``ratio_cpu_time``, from process CPU time
(use ``--threads 1``), which excludes the time other jobs held the cores. Rows are merged into ``reports/benchmarks/steering_overhead.json``
(replacing rows with the same shape, mode, impl, EBM dtype, device and batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eds.ebm import PAPER_WIDTHS, EBMSpec, EnergyMLP
from eds.energy_grad import reference_steer
from eds.records import atomic_write_json
from eds.steerers import EnergySteerer
from eds.steering import NoSteer, Steerer, find_decoder_layers


@dataclass(frozen=True)
class Shape:
    device: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    batches: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    ebm_dtype: str


SHAPES = {
    "llama8b": Shape("cuda", tuple(range(8, 23)), PAPER_WIDTHS, (1, 16, 64), 128, 64, "bfloat16"),
    "embedded": Shape("cpu", tuple(range(10, 15)), (512, 256, 256, 128), (1, 8), 64, 32, "float32"),
    "tiny": Shape("cpu", (0, 1), (32, 16), (1, 4), 16, 8, "float32"),
}


def build_model(shape: str, device: torch.device) -> nn.Module:
    """The model of a shape, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape == "embedded":
        from eds.config import ModelConfig
        from eds.models import load_model

        return load_model(ModelConfig(device=str(device))).model
    if shape == "llama8b":
        config = LlamaConfig(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
            rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128009,
        )
        dtype = torch.bfloat16
    else:
        config = LlamaConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        )
        dtype = torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class AutogradEnergySteerer(EnergySteerer):
    """The authors' approach: autograd through the float32 EBM module at every step, in the hook."""

    def _edit(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        new = reference_steer(self._ebm_modules[layer], flat, self.eta, self.steps, self.normalize, self.threshold)
        out = new.to(h.dtype).view_as(h)
        return out if mask is None else torch.where(mask.unsqueeze(-1), out, h)

    def attach(self, model: nn.Module) -> Any:
        layers = find_decoder_layers(model)
        self._ebm_modules = {i: self.ebms[i].to(next(layers[i].parameters()).device).float().eval() for i in self.layers}
        return super().attach(model)


def make_steerer(model: nn.Module, shape: Shape, impl: str, ebm_dtype: str, steps: int) -> EnergySteerer:
    hidden = model.config.get_text_config().hidden_size
    ebms = {}
    for layer in shape.layers:
        torch.manual_seed(layer)
        ebms[layer] = EnergyMLP(EBMSpec(hidden, shape.widths, dropout=0.0))
    cls = AutogradEnergySteerer if impl == "autograd" else EnergySteerer
    return cls(ebms, eta=0.05, steps=steps, normalize="unit", dtype=getattr(torch, ebm_dtype))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_generate(
    model: nn.Module, steerer: Steerer, ids: torch.Tensor, new_tokens: int, mode: str
) -> tuple[float, float]:
    """Wall and process-CPU seconds for one greedy generation of ``new_tokens`` tokens, steered."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
        "pad_token_id": 0, "attention_mask": torch.ones_like(ids),
    }
    if mode == "static":
        kwargs["cache_implementation"] = "static"
    with steerer.attach(model) as session:
        session.prepare_generation(ids.shape[1])
        synchronize(ids.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model.generate(ids, **kwargs)
        synchronize(ids.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert out.shape[1] == ids.shape[1] + new_tokens, "generation stopped early"
    return seconds, cpu_seconds


def measure(model: nn.Module, steerer: Steerer, batch: int, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(100, vocab - 100, (batch, args.prompt_tokens), generator=gen).to(device)
    plain = NoSteer()
    for variant in (plain, steerer):  # warm-up (and, for static on CUDA, compilation)
        timed_generate(model, variant, ids, args.new_tokens, mode)
    times: dict[str, list[float]] = {"unsteered": [], "steered": []}
    cpu_times: dict[str, list[float]] = {"unsteered": [], "steered": []}
    for _ in range(args.repeats):
        for name, variant in (("unsteered", plain), ("steered", steerer)):
            wall, cpu = timed_generate(model, variant, ids, args.new_tokens, mode)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    tokens = batch * args.new_tokens
    unsteered = tokens / statistics.median(times["unsteered"])
    steered = tokens / statistics.median(times["steered"])
    extra = {}
    if device.type == "cpu":
        # process CPU time: what the run computed, without the time other jobs held the cores
        cpu_ratio = statistics.median(cpu_times["unsteered"]) / statistics.median(cpu_times["steered"])
        extra = {"ratio_cpu_time": round(cpu_ratio, 4), "cpu_seconds": {k: [round(t, 4) for t in v] for k, v in cpu_times.items()}}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "batch": batch,
        "unsteered_tps": round(unsteered, 2),
        "steered_tps": round(steered, 2),
        "ratio": round(steered / unsteered, 4),
        # best-of-repeats figures: less sensitive to other jobs on a shared machine
        "ratio_best": round(min(times["unsteered"]) / min(times["steered"]), 4),
        "shape": args.shape,
        "mode": mode,
        "impl": args.impl,
        "ebm_dtype": args.ebm_dtype,
        "steps": args.steps,
        "steered_layers": len(args.layers),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        **extra,
    }


def merge_rows(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with ``rows`` replacing earlier rows of the same configuration."""
    keys = ("shape", "mode", "impl", "ebm_dtype", "device", "batch")
    old = json.loads(path.read_text(encoding="utf-8")).get("rows", []) if path.is_file() else []
    fresh = {tuple(r.get(k) for k in keys) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in keys) not in fresh]
    return {
        "description": "steered vs unsteered greedy tokens/s, measured side by side (benchmarks/steering_overhead.py)",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": kept + rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", help="override the shape's device (cuda, cpu)")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--prompt-tokens", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--layers", type=int, nargs="+", help="steered layers")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=["dynamic", "static"])
    parser.add_argument("--impl", choices=["closed_form", "autograd"], default="closed_form")
    parser.add_argument("--ebm-dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", default="reports/benchmarks/steering_overhead.json")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    device = torch.device(args.device or shape.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --shape {args.shape} needs a CUDA GPU (or pass --device cpu)", file=sys.stderr)
        return 2
    args.batches = args.batches or list(shape.batches)
    args.prompt_tokens = args.prompt_tokens or shape.prompt_tokens
    args.new_tokens = args.new_tokens or shape.new_tokens
    args.layers = tuple(args.layers or shape.layers)
    args.ebm_dtype = args.ebm_dtype or (shape.ebm_dtype if device.type == "cuda" else "float32")
    # the autograd anchor cannot run inside HF's compiled (static-cache) decode step
    gpu_modes = ["static", "dynamic"] if args.impl == "closed_form" else ["dynamic"]
    args.modes = args.modes or (gpu_modes if device.type == "cuda" else ["dynamic"])
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    model = build_model(args.shape, device)
    steerer = make_steerer(model, Shape(**{**shape.__dict__, "layers": args.layers}), args.impl, args.ebm_dtype, args.steps)
    print(
        f"shape {args.shape} on {device}: {len(args.layers)} steered layers, {args.steps} steps, EBM "
        f"{list(shape.widths)} ({args.ebm_dtype}, {args.impl}), prompt {args.prompt_tokens}, {args.new_tokens} new tokens"
    )
    print(f"{'mode':>8} {'batch':>6} {'unsteered tok/s':>16} {'steered tok/s':>14} {'ratio':>7} {'best':>7} {'cpu-time':>8}")
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            row = measure(model, steerer, batch, args, mode)
            rows.append(row)
            print(
                f"{mode:>8} {batch:>6} {row['unsteered_tps']:>16.1f} {row['steered_tps']:>14.1f} "
                f"{row['ratio']:>7.3f} {row['ratio_best']:>7.3f} {row.get('ratio_cpu_time', float('nan')):>8.3f}",
                flush=True,
            )
    out = Path(args.out)
    atomic_write_json(out, merge_rows(out, rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
