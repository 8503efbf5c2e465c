"""LoRA supervised fine-tuning on chat pairs (prompt -> response), loss on response tokens only.

Used to build the cautious testbed (a safety-tuned model that also over-refuses), but general:
any list of (prompt, response) pairs and any causal LM with a chat template. Training is seeded
(shuffling, dropout, LoRA init) and runs on the model's device; the adapter is saved as
safetensors in half precision to keep it small.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eds.models import format_chat
from eds.records import atomic_dir

IGNORE = -100


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 5e-4
    epochs: float = 2.0
    batch_size: int = 16
    max_length: int = 96
    warmup_steps: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def build_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    system_prompt: str | None,
    max_length: int,
    add_eos: bool = True,
) -> Example:
    """Chat-format a pair; labels are the response tokens (+ EOS), the prompt is masked."""
    chat = format_chat(tokenizer, prompt, system_prompt)
    prompt_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return Example(ids, labels)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training; padding is masked out of attention and loss."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: LoraSettings,
    on_step: Callable[[int, float], None] | None = None,
) -> PreTrainedModel:
    """Wrap ``model`` in a LoRA adapter and train it; returns the PEFT model (in eval mode)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = random.Random(settings.seed)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = max(1, round(settings.epochs * steps_per_epoch))
    device = next(peft_model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order: list[int] = []
    peft_model.train()
    for step in range(total):
        if len(order) < settings.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch_idx, order = order[: settings.batch_size], order[settings.batch_size :]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_idx], pad_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _schedule(step, total, settings.warmup_steps)
        loss = peft_model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    peft_model.eval()
    return peft_model


def save_adapter(peft_model: PreTrainedModel, folder: str | Path, dtype: torch.dtype = torch.float16) -> int:
    """Save the adapter (safetensors) with its weights cast to ``dtype``; returns bytes on disk."""
    folder = Path(folder)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(dtype)
    try:
        with atomic_dir(folder) as tmp:  # a kill mid-save leaves the previous adapter whole
            peft_model.save_pretrained(tmp, safe_serialization=True)
    finally:
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
