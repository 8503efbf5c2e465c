"""Batched, deterministic (greedy) chat generation with left padding.

Prompt truncation policy: a user prompt longer than ``max_prompt_tokens`` tokens keeps its
first ``max_prompt_tokens`` tokens and is marked ``truncated``; the chat template (system
prompt, role markers, generation prompt) is applied after truncation, so it stays whole.
Within a call, prompts are batched by length to waste little padding; results come back in
input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from eds.models import LoadedModel


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding parameters; stored with every response."""

    max_new_tokens: int = 48
    max_prompt_tokens: int = 512
    batch_size: int = 8

    def as_record(self) -> dict[str, int | str]:
        return {"strategy": "greedy", **asdict(self)}


@dataclass(frozen=True)
class Generation:
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    truncated: bool


def truncate_prompt(loaded: LoadedModel, prompt: str, max_tokens: int) -> tuple[str, bool]:
    """The prompt cut to its first ``max_tokens`` tokens (and whether it was cut)."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return prompt, False
    return loaded.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), True


def generation_config(loaded: LoadedModel, decoding: Decoding) -> GenerationConfig:
    """Greedy decoding with the model's own end-of-turn token(s) and the tokenizer's padding."""
    tok = loaded.tokenizer
    eos = loaded.model.generation_config.eos_token_id
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=decoding.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos if eos is not None else tok.eos_token_id,
    )


def count_new_tokens(new_ids: torch.Tensor, stop_ids: set[int]) -> list[int]:
    """Tokens generated per row, up to and including the first stop token (padding after it excluded)."""
    counts = []
    for row in new_ids.tolist():
        n = len(row)
        for pos, token in enumerate(row):
            if token in stop_ids:
                n = pos + 1
                break
        counts.append(n)
    return counts


BatchHook = Callable[[int], AbstractContextManager[object]]
"""Called with the padded prompt length around each ``model.generate`` call (steering uses it)."""


@torch.inference_mode()
def generate_batch(
    loaded: LoadedModel,
    chats: Sequence[str],
    decoding: Decoding,
    around: BatchHook | None = None,
    **generate_kwargs: Any,
) -> list[tuple[str, int, int]]:
    """Greedy-generate for already chat-formatted prompts in one left-padded batch.

    ``generate_kwargs`` go to ``model.generate`` (generation parameters such as
    ``cache_implementation="static"`` or ``use_cache=False`` into its config).
    """
    tok = loaded.tokenizer
    enc = tok(list(chats), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = {k: v.to(loaded.device) for k, v in enc.items()}
    gen_cfg = generation_config(loaded, decoding)
    model_kwargs = gen_cfg.update(**generate_kwargs)
    with around(enc["input_ids"].shape[1]) if around is not None else nullcontext():
        out = loaded.model.generate(**enc, generation_config=gen_cfg, **model_kwargs)
    new_ids = out[:, enc["input_ids"].shape[1] :].cpu()
    eos = gen_cfg.eos_token_id
    stop_ids = set(eos if isinstance(eos, list) else [eos])
    counts = count_new_tokens(new_ids, stop_ids)
    texts = tok.batch_decode(new_ids, skip_special_tokens=True)
    n_prompt = enc["attention_mask"].sum(dim=1).tolist()
    return [(text.strip(), int(p), n) for text, p, n in zip(texts, n_prompt, counts)]


def generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    decoding: Decoding,
    on_batch: Callable[[int], None] | None = None,
    chat: Callable[[str], str] | None = None,
    around: BatchHook | None = None,
    **generate_kwargs: Any,
) -> list[Generation]:
    """Generate a response for every prompt; ``on_batch(n)`` is called after each batch of n.

    ``chat`` formats a (truncated) prompt as a chat turn (default: the model's chat template and
    system prompt); ``around`` and ``generate_kwargs`` go to :func:`generate_batch`.
    """
    chat = chat if chat is not None else loaded.chat
    prepared = [truncate_prompt(loaded, p, decoding.max_prompt_tokens) for p in prompts]
    chats = [chat(text) for text, _ in prepared]
    lengths = [len(loaded.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chats]
    order = sorted(range(len(chats)), key=lambda i: (lengths[i], i))
    results: dict[int, Generation] = {}
    for start in range(0, len(order), decoding.batch_size):
        idx = order[start : start + decoding.batch_size]
        outputs = generate_batch(loaded, [chats[i] for i in idx], decoding, around, **generate_kwargs)
        for i, (text, n_prompt, n_new) in zip(idx, outputs):
            results[i] = Generation(text, n_prompt, n_new, prepared[i][1])
        if on_batch is not None:
            on_batch(len(idx))
    return [results[i] for i in range(len(prompts))]
