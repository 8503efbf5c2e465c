"""Zero-shot multiple choice by log-likelihood, in lm-evaluation-harness's protocol, steerable.

Two task formats, as lm-eval (v0.4) defines them:

* ``mmlu`` (lm-eval ``mmlu_<subject>``): context ``"The following are multiple choice questions
  (with answers) about <subject>.\\n\\n"`` (when a subject is known) + ``"<question>\\nA. ...\\nB.
  ...\\nC. ...\\nD. ...\\nAnswer:"``; the continuations are ``" A"``, ``" B"``, ...; metric ``acc``.
* ``arc`` (lm-eval ``arc_challenge``): context ``"Question: <question>\\nAnswer:"``; the
  continuations are ``" " + choice text``; metrics ``acc`` and ``acc_norm`` (log-likelihood
  divided by the choice's length in characters).

Context and continuation are tokenised as lm-eval's ``_encode_pair`` does (trailing spaces of the
context move to the continuation; the pair is encoded whole, and the context's tokens are cut
off), without special tokens and without a chat template. A system prompt (the system-prompt
baseline) is prepended like lm-eval's ``--system_instruction`` without a chat template:
``system + "\\n\\n" + context``.

**Steering.** Scoring runs through :func:`eds.scoring.score_batch` with the steerer attached:
exactly the positions that predict continuation tokens are steered, the same states steered
generation steers (the last prompt token and every token after it). When every continuation of
a question is one token (MMLU letters), one forward per question scores all its choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from eds.datasets import ChoiceItem
from eds.models import LoadedModel
from eds.scoring import score_batch
from eds.steering import NoSteer, Steerer, SteeringSession

LETTERS = "ABCDEFGHIJ"
McFormat = Literal["mmlu", "arc"]
FORMATS: tuple[McFormat, ...] = ("mmlu", "arc")


# ------------------------------------------------------------------------------ prompts


def mc_prompt(question: str, choices: Sequence[str], subject: str | None = None) -> str:
    """lm-eval's MMLU context (description + question + lettered choices + ``Answer:``)."""
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n" if subject else ""
    lines = [question.strip(), *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)), "Answer:"]
    return head + "\n".join(lines)


def arc_prompt(question: str) -> str:
    """lm-eval's ARC context."""
    return f"Question: {question}\nAnswer:"


def with_system(context: str, system_prompt: str | None) -> str:
    """``system + "\\n\\n" + context`` (lm-eval's system instruction without a chat template)."""
    if not system_prompt:
        return context
    if system_prompt[-1].isspace() or context[:1].isspace():
        return system_prompt + context
    return system_prompt + "\n\n" + context


def requests_for(item: ChoiceItem, fmt: McFormat, system_prompt: str | None = None) -> tuple[str, list[str]]:
    """(context, continuations) of one question in format ``fmt``."""
    if fmt == "mmlu":
        context = mc_prompt(item.question, item.choices, item.subject)
        continuations = [f" {LETTERS[i]}" for i in range(len(item.choices))]
    elif fmt == "arc":
        context = arc_prompt(item.question)
        continuations = [f" {choice}" for choice in item.choices]
    else:
        raise ValueError(f"unknown multiple-choice format {fmt!r}; known: {', '.join(FORMATS)}")
    return with_system(context, system_prompt), continuations


def encode_pair(tokenizer: object, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for causal models (no special tokens)."""
    if not context:
        raise ValueError("empty context")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return list(ctx), list(whole[len(ctx) :])


# ------------------------------------------------------------------------------ scoring


@torch.inference_mode()
def _next_token_logprobs(
    loaded: LoadedModel, session: SteeringSession, contexts: Sequence[list[int]], candidates: Sequence[list[int]]
) -> list[list[float]]:
    """For each context, log p(candidate token | context) of its candidate tokens, one forward per batch.

    Right-padded; only the last context position is steered (the position every candidate is
    predicted from).
    """
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    predicts = torch.zeros(ids.shape, dtype=torch.bool)
    for row, ctx in enumerate(contexts):
        ids[row, : len(ctx)] = torch.tensor(ctx)
        attention[row, : len(ctx)] = 1
        predicts[row, len(ctx) - 1] = True
    position_ids = (attention.cumsum(dim=-1) - 1).clamp_min(0)
    session.prepare_scoring(predicts)
    device = loaded.device
    try:
        out = loaded.model(
            input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=position_ids.to(device), use_cache=False
        )
    finally:
        session.clear()
    last = torch.tensor([len(c) - 1 for c in contexts], device=out.logits.device)
    logits = out.logits[torch.arange(len(contexts), device=last.device), last].float()
    logp = torch.log_softmax(logits, dim=-1).cpu()
    return [[float(logp[row, token]) for token in cands] for row, cands in enumerate(candidates)]


def choice_logliks(
    loaded: LoadedModel,
    items: Sequence[ChoiceItem],
    fmt: McFormat = "mmlu",
    steerer: Steerer | None = None,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[list[float]]:
    """Summed log-likelihood of every choice's continuation, per question, under ``steerer``.

    ``system_prompt`` defaults to the steerer's own (the system-prompt baseline).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steerer = steerer if steerer is not None else NoSteer()
    system = system_prompt if system_prompt is not None else steerer.system_prompt
    tok = loaded.tokenizer
    encoded: list[list[tuple[list[int], list[int]]]] = []
    for item in items:
        context, continuations = requests_for(item, fmt, system)
        encoded.append([encode_pair(tok, context, c) for c in continuations])
    results: list[list[float]] = [[0.0] * len(pairs) for pairs in encoded]
    single = [i for i, pairs in enumerate(encoded) if all(len(k) == 1 and c == pairs[0][0] for c, k in pairs)]
    single_set = set(single)
    general = [(i, j) for i, pairs in enumerate(encoded) if i not in single_set for j in range(len(pairs))]
    with steerer.attach(loaded.model) as session:
        order = sorted(single, key=lambda i: (len(encoded[i][0][0]), i))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            scores = _next_token_logprobs(
                loaded, session, [encoded[i][0][0] for i in idx], [[k[0] for _, k in encoded[i]] for i in idx]
            )
            for i, row in zip(idx, scores):
                results[i] = row
        order2 = sorted(general, key=lambda ij: (sum(map(len, encoded[ij[0]][ij[1]])), ij))
        for start in range(0, len(order2), batch_size):
            idx2 = order2[start : start + batch_size]
            pairs = [encoded[i][j] for i, j in idx2]
            sums = score_batch(loaded, session, [p[0] for p in pairs], [p[1] for p in pairs], "right")
            for (i, j), value in zip(idx2, sums):
                results[i][j] = value
    return results


@dataclass(frozen=True)
class ChoiceResult:
    """One scored question: per-choice log-likelihoods and the predictions."""

    logliks: tuple[float, ...]
    pred: int
    pred_norm: int
    answer: int

    @property
    def correct(self) -> bool:
        return self.pred == self.answer

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.answer


def score_choices(
    loaded: LoadedModel,
    items: Sequence[ChoiceItem],
    fmt: McFormat = "mmlu",
    steerer: Steerer | None = None,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[ChoiceResult]:
    """``acc`` prediction (argmax log-likelihood) and ``acc_norm`` prediction (argmax of
    log-likelihood / choice length in characters, as lm-eval) for each question."""
    lls = choice_logliks(loaded, items, fmt, steerer, batch_size, system_prompt)
    out = []
    for item, row in zip(items, lls):
        values = np.asarray(row)
        lengths = np.asarray([float(len(c)) for c in item.choices]) if fmt == "arc" else np.ones(len(row))
        out.append(ChoiceResult(tuple(row), int(np.argmax(values)), int(np.argmax(values / np.maximum(lengths, 1.0))), item.answer))
    return out


# ------------------------------------------------------------------------------ the original API


def letter_token_ids(loaded: LoadedModel, n_choices: int) -> list[int]:
    """Token ids of " A", " B", ...; each must be a single token."""
    ids = []
    for letter in LETTERS[:n_choices]:
        tokens = loaded.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ValueError(f"' {letter}' is {len(tokens)} tokens for this tokenizer; letter scoring needs 1")
        ids.append(tokens[0])
    return ids


@torch.inference_mode()
def letter_logprobs(loaded: LoadedModel, prompts: Sequence[str], n_choices: int, batch_size: int = 16) -> torch.Tensor:
    """``[len(prompts), n_choices]`` log-probabilities of each letter after each prompt (unsteered)."""
    letters = torch.tensor(letter_token_ids(loaded, n_choices))
    rows = []
    for start in range(0, len(prompts), batch_size):
        enc = loaded.tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
        enc = {k: v.to(loaded.device) for k, v in enc.items()}
        logits = loaded.model(**enc).logits[:, -1, :].float()  # left padding: last column is the last token
        rows.append(torch.log_softmax(logits, dim=-1)[:, letters.to(logits.device)].cpu())
    return torch.cat(rows)


def predict(
    loaded: LoadedModel, items: Sequence[ChoiceItem], batch_size: int = 16, steerer: Steerer | None = None
) -> list[int]:
    """Predicted choice index per item in the MMLU format (items may have different numbers of choices)."""
    return [r.pred for r in score_choices(loaded, items, "mmlu", steerer, batch_size)]


def accuracy(
    loaded: LoadedModel, items: Sequence[ChoiceItem], batch_size: int = 16, steerer: Steerer | None = None
) -> float:
    """MMLU-format accuracy (lm-eval ``acc``)."""
    preds = predict(loaded, items, batch_size, steerer)
    return sum(p == item.answer for p, item in zip(preds, items)) / len(items)


__all__ = [
    "FORMATS",
    "LETTERS",
    "ChoiceResult",
    "McFormat",
    "accuracy",
    "arc_prompt",
    "choice_logliks",
    "encode_pair",
    "letter_logprobs",
    "letter_token_ids",
    "mc_prompt",
    "predict",
    "requests_for",
    "score_choices",
    "with_system",
]
