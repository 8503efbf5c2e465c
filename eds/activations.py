"""Capture every decoder layer's residual-stream input at the last prompt token, in one pass.

The EBMs read the state the paper steers: the *input* of decoder layer ``l`` (the residual
stream after layers ``0..l-1``; for ``l = 0`` the token embeddings) at the last token of the
chat-formatted prompt. That is ``output_hidden_states=True``'s ``hidden_states[l]``, but keeping
all hidden states holds ``[layers, batch, tokens, hidden]`` in memory; here a forward pre-hook
on each decoder layer keeps only the row it needs, ``[batch, hidden]``, so memory does not
grow with the prompt length, and every layer is captured in ONE forward pass (the authors'
code runs one full pass per layer). No logits are computed beyond the last position
(``logits_to_keep=1``) and no cache is built.

Batches are left-padded (the tokenizer from :func:`eds.models.load_tokenizer`); positions come
from the attention mask, as in generation, so a padded row sees the same positions as alone.
Prompts are truncated and chat-formatted exactly as in :mod:`eds.generation`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eds.generation import truncate_prompt
from eds.models import LoadedModel


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (``model.model.layers`` for Llama-like models)."""
    candidates: list[Any] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            candidates.append(get_decoder())
        except (AttributeError, NotImplementedError):
            pass
    candidates += [getattr(model, "model", None), getattr(getattr(model, "transformer", None), "h", None)]
    for candidate in candidates:
        layers = getattr(candidate, "layers", candidate)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise TypeError(f"cannot find the decoder layers of {type(model).__name__}")


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row (``-1``'s position for left padding)."""
    mask = attention_mask.long()
    return mask.cumsum(dim=-1).argmax(dim=-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only, as generation does for left-padded rows."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


@contextmanager
def capture_layer_inputs(layers: Sequence[nn.Module], rows: Callable[[], torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """While open, each forward stores ``input[arange(B), rows()]`` of every layer, in layer order.

    The list yielded is filled during the forward pass (one ``[batch, hidden]`` tensor per layer)
    and cleared by the caller between passes. Hooks are removed on exit, also on error.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        index = rows()
        captured.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)])

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def last_token_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[n_layers, batch, hidden]``: every decoder layer's input at each row's last token.

    One forward pass; the result stays on the model's device and dtype.
    """
    layers = decoder_layers(model)
    last = last_token_positions(attention_mask)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with capture_layer_inputs(layers, lambda: last) as captured:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            **extra,
        )
    if len(captured) != len(layers):
        raise RuntimeError(f"captured {len(captured)} of {len(layers)} layers (a layer was skipped?)")
    return torch.stack(captured)


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as the model sees it: chat-formatted, after truncation."""

    chat: str
    n_tokens: int
    truncated: bool


def prepare_prompts(loaded: LoadedModel, prompts: Sequence[str], max_prompt_tokens: int) -> list[PreparedPrompt]:
    """Truncate and chat-format exactly as generation does; count the resulting tokens."""
    out = []
    for prompt in prompts:
        text, truncated = truncate_prompt(loaded, prompt, max_prompt_tokens)
        chat = loaded.chat(text)
        n_tokens = len(loaded.tokenizer(chat, add_special_tokens=False)["input_ids"])
        out.append(PreparedPrompt(chat, n_tokens, truncated))
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def encode(loaded: LoadedModel, chats: Sequence[str]) -> dict[str, torch.Tensor]:
    """A left-padded batch on the model's device."""
    enc = loaded.tokenizer(list(chats), return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(loaded.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def extract_states(
    loaded: LoadedModel,
    prepared: Sequence[PreparedPrompt],
    batch_size: int,
    out_dtype: torch.dtype = torch.float32,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``[n_layers, len(prepared), hidden]`` on the CPU, in input order (batched by length)."""
    n_layers = len(decoder_layers(loaded.model))
    hidden = int(loaded.model.config.hidden_size)
    out = torch.empty((n_layers, len(prepared), hidden), dtype=out_dtype)
    for batch in length_batches([p.n_tokens for p in prepared], batch_size):
        enc = encode(loaded, [prepared[i].chat for i in batch])
        states = last_token_states(loaded.model, enc["input_ids"], enc["attention_mask"])
        out[:, batch] = states.to("cpu", torch.float32).to(out_dtype)
        if on_batch is not None:
            on_batch(len(batch))
    return out


__all__ = [
    "PreparedPrompt",
    "capture_layer_inputs",
    "decoder_layers",
    "encode",
    "extract_states",
    "last_token_positions",
    "last_token_states",
    "length_batches",
    "position_ids",
    "prepare_prompts",
]
