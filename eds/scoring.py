"""Steered generation and steered log-likelihood scoring: what the evaluation stage calls.

Both take any :class:`eds.steering.Steerer` (``NoSteer()`` for the plain model) and attach it for
the whole call.

* :func:`steered_generate` follows :func:`eds.generation.generate` exactly (truncation, chat
  format, length-sorted left-padded batches, greedy, results in input order), with the
  steerer's system prompt (if any) in the chat and its hooks on the model. With ``NoSteer`` it
  returns what ``eds.generation.generate`` returns.
* :func:`steered_loglik` is the sum of log-probabilities of each continuation's tokens given its
  context, in one forward per batch (no cache), steering exactly the positions that predict
  continuation tokens -- the same states steered generation would steer if it were fed the
  continuation token by token, so capability benchmarks measure the steered model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from eds.generation import Decoding, Generation, generate
from eds.models import LoadedModel, format_chat
from eds.steering import NoSteer, Steerer, SteeringSession


def chat_for(loaded: LoadedModel, prompt: str, steerer: Steerer) -> str:
    """``prompt`` as a chat turn, with the steerer's system prompt when it has one."""
    system = steerer.system_prompt if steerer.system_prompt is not None else loaded.system_prompt
    return format_chat(loaded.tokenizer, prompt, system)


def steered_generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    decoding: Decoding,
    steerer: Steerer | None = None,
    on_batch: Callable[[int], None] | None = None,
    **generate_kwargs: Any,
) -> list[Generation]:
    """A response for every prompt, generated with ``steerer`` attached: :func:`eds.generation.generate`
    with the steerer's system prompt (if any) in the chat and its session armed around each batch.

    ``generate_kwargs`` go to ``model.generate`` (e.g. ``cache_implementation="static"``,
    ``use_cache=False``, ``min_new_tokens``).
    """
    steerer = steerer if steerer is not None else NoSteer()
    with steerer.attach(loaded.model) as session:
        return generate(loaded, prompts, decoding, on_batch, chat=lambda p: chat_for(loaded, p, steerer),
                        around=session.generating, **generate_kwargs)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def score_batch(
    loaded: LoadedModel,
    session: SteeringSession,
    contexts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    padding_side: Literal["left", "right"] = "right",
) -> list[float]:
    """Summed continuation log-probs for token-id pairs in one padded forward."""
    model = loaded.model
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    lengths = [len(c) + len(k) for c, k in zip(contexts, continuations)]
    rows, width = len(lengths), max(lengths)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    predicts = torch.zeros((rows, width), dtype=torch.bool)  # positions whose next token is scored
    for row, (ctx, cont) in enumerate(zip(contexts, continuations)):
        offset = 0 if padding_side == "right" else width - lengths[row]
        ids[row, offset : offset + lengths[row]] = torch.tensor(ctx + cont)
        attention[row, offset : offset + lengths[row]] = 1
        predicts[row, offset + len(ctx) - 1 : offset + lengths[row] - 1] = True
    targets = torch.cat([ids[:, 1:], torch.full((rows, 1), pad, dtype=torch.long)], dim=1)
    position_ids = (attention.cumsum(dim=-1) - 1).clamp_min(0)
    session.prepare_scoring(predicts)
    keep = width - int(predicts.any(dim=0).nonzero().min())
    extra = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    device = loaded.device
    try:
        out = model(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            position_ids=position_ids.to(device),
            use_cache=False,
            **extra,
        )
    finally:
        session.clear()
    logits = out.logits[:, -keep:].float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets[:, -keep:].to(device).unsqueeze(-1)).squeeze(-1)
    totals = (picked * predicts[:, -keep:].to(device)).sum(dim=-1)
    return [float(x) for x in totals.double().cpu()]


def steered_loglik(
    loaded: LoadedModel,
    contexts: Sequence[str],
    continuations: Sequence[str],
    steerer: Steerer | None = None,
    batch_size: int = 8,
    padding_side: Literal["left", "right"] = "right",
    chat: bool = False,
) -> list[float]:
    """``sum_t log p(continuation_t | context, continuation_<t)`` for each pair, steered.

    Context and continuation are tokenized separately without special tokens (a chat template
    brings its own), so put any separating space at the start of the continuation. With
    ``chat=True`` each context is first formatted as a user turn (with the steerer's system
    prompt, if any). Pairs are batched by length; results come back in input order.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steerer = steerer if steerer is not None else NoSteer()
    tok = loaded.tokenizer
    texts = [chat_for(loaded, c, steerer) if chat else c for c in contexts]
    ctx_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    cont_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    empty = [i for i, (c, k) in enumerate(zip(ctx_ids, cont_ids)) if not c or not k]
    if empty:
        raise ValueError(f"empty context or continuation (after tokenization) at indices {empty[:10]}")
    order = sorted(range(len(texts)), key=lambda i: (len(ctx_ids[i]) + len(cont_ids[i]), i))
    scores: dict[int, float] = {}
    with steerer.attach(loaded.model) as session:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = score_batch(loaded, session, [ctx_ids[i] for i in idx], [cont_ids[i] for i in idx], padding_side)
            scores.update(zip(idx, batch))
    return [scores[i] for i in range(len(texts))]


__all__ = ["chat_for", "score_batch", "steered_generate", "steered_loglik"]
