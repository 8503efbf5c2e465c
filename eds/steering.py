"""Hooks that edit a Hugging Face decoder's residual stream at the steered positions.

A steerer attaches forward pre-hooks to chosen decoder layers; the hook of layer ``i`` edits the
layer's input hidden states, which is exactly ``output_hidden_states[i]`` (what the EBMs read).

**Steered positions** (``positions="steered"``): the last prompt token and every token after it,
never padding. For a left-padded batch of width ``P`` (the prompt), that is absolute column
``P - 1`` and every later column, for every row, so each row is steered at its own last real
token. The hook never looks at the data to decide; it only needs the padded prompt width
(:meth:`SteeringSession.prepare_generation`) and whether the forward pass continues a KV cache:

* cached decode (``T == 1`` with a cache): the one new token is steered;
* prefill, or a full recompute without cache (the input starts at column 0): the last
  ``T - P + 1`` columns are steered, so greedy decoding gives the same tokens with or without
  the KV cache;
* an explicit ``[B, T]`` mask for one full forward (:meth:`SteeringSession.prepare_scoring`,
  used by log-likelihood scoring, right- or left-padded);
* unprepared: every position.

These are Python decisions on shapes (no ``.item()``, no host sync); the cached decode path reads
no session state at all, so a compiled decode step is not re-specialised per batch.
``positions="all"`` steerers (direction ablation) edit every position of every forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Positions = Literal["steered", "all"]


class SteeringError(ValueError):
    """A steerer does not fit the model it is attached to."""


# ----------------------------------------------------------------------------- layer discovery


def _layer_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList whose children all share one class, with the name it has in ``model``."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child).__name__ for child in module}) == 1:
                found.append((name, module))
    return found


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers, found without per-family code.

    Preference: a ModuleList of ``*DecoderLayer`` modules, then of ``*Layer``/``*Block`` modules,
    then one whose length is ``config.num_hidden_layers``; the longest list wins ties.
    """
    candidates = _layer_lists(model)
    if not candidates:
        raise SteeringError(f"no list of decoder layers found in {type(model).__name__}")
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None)

    def rank(item: tuple[str, nn.ModuleList]) -> tuple[int, int, int]:
        cls = type(item[1][0]).__name__
        kind = 2 if cls.endswith("DecoderLayer") else 1 if cls.endswith(("Layer", "Block")) else 0
        return kind, int(len(item[1]) == n_layers), len(item[1])

    return max(candidates, key=rank)[1]


# ----------------------------------------------------------------------------- steerer protocol


@runtime_checkable
class Steerer(Protocol):
    """Anything that can be attached to a model for steered generation and scoring."""

    name: str
    #: the system prompt the chat format should use instead of the model's own (None: keep it)
    system_prompt: str | None

    def attach(self, model: nn.Module) -> "SteeringSession": ...


class LayerEdit(Protocol):
    """Edits hidden states ``h`` [B, W, D] entering decoder layer ``layer``.

    ``mask`` [B, W] (bool) marks the positions to edit when not all of them are; the edit must
    leave the other positions bit-identical.
    """

    def __call__(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor: ...


def _hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _has_cache(kwargs: dict[str, Any]) -> bool:
    """Whether the layer call continues a KV cache (``past_key_value`` before transformers 5)."""
    return kwargs.get("past_key_values", kwargs.get("past_key_value")) is not None


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], h: torch.Tensor) -> tuple[tuple[Any, ...], dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


class SteeringSession:
    """The live hooks of one steerer on one model, and the position plan of the current batch.

    A context manager: hooks are registered on ``__enter__`` and removed on ``__exit__``.
    ``edits`` maps a layer index to the edit applied to that layer's input; ``final_output``
    (optional) edits the last layer's output, i.e. the input of the final norm.
    """

    def __init__(
        self,
        model: nn.Module,
        edits: dict[int, LayerEdit],
        positions: Positions = "steered",
        final_output: LayerEdit | None = None,
    ) -> None:
        self.model = model
        self.edits = dict(edits)
        self.positions = positions
        self.final_output = final_output
        self._handles: list[RemovableHandle] = []
        self.prompt_len: int | None = None
        self._score_mask: torch.Tensor | None = None
        self._score_window = 0
        if self.edits or final_output is not None:
            layers = find_decoder_layers(model)
            bad = [i for i in self.edits if not 0 <= i < len(layers)]
            if bad:
                raise SteeringError(f"layers {bad} out of range: the model has {len(layers)} decoder layers")
            self._layers = layers
        else:
            self._layers = None

    # -- position plan -------------------------------------------------------------------------

    def prepare_generation(self, prompt_len: int) -> None:
        """Next: generation from a left-padded prompt batch of width ``prompt_len``."""
        if prompt_len < 1:
            raise SteeringError(f"prompt_len must be >= 1, got {prompt_len}")
        self.prompt_len = int(prompt_len)
        self._score_mask = None

    def prepare_scoring(self, mask: torch.Tensor) -> None:
        """Next: one full forward (no cache) steered exactly where ``mask`` [B, T] is true.

        ``mask`` should be built on the host; it is moved to the model's device once here.
        """
        mask = mask.to(torch.bool)
        columns = mask.any(dim=0).nonzero()
        self._score_window = int(mask.shape[1] - columns.min()) if columns.numel() else 0
        device = next(self.model.parameters()).device
        self._score_mask = mask.to(device)
        self.prompt_len = None

    @contextmanager
    def generating(self, prompt_len: int) -> Iterator[None]:
        """Prepared for one ``model.generate`` call on a batch of width ``prompt_len``, cleared after."""
        self.prepare_generation(prompt_len)
        try:
            yield
        finally:
            self.clear()

    def clear(self) -> None:
        """Back to unprepared: every position is steered."""
        self.prompt_len = None
        self._score_mask = None

    def window(self, width: int, cached: bool) -> tuple[int, torch.Tensor | None]:
        """How many trailing columns of a ``width``-column input are steered, and their mask if partial."""
        if self.positions == "all":
            return width, None
        if cached and width == 1:
            return 1, None  # the decode step: reads no other state (stable under torch.compile)
        if self._score_mask is not None:
            if self._score_mask.shape[1] != width:
                raise SteeringError(f"scoring mask has {self._score_mask.shape[1]} columns, input has {width}")
            w = self._score_window
            return w, self._score_mask[:, width - w :] if w else None
        if self.prompt_len is None:
            return width, None
        if cached and width != self.prompt_len:
            return width, None  # a cached chunk of new tokens: all of them are generated tokens
        return max(width - self.prompt_len + 1, 0), None

    # -- hooks -----------------------------------------------------------------------------------

    def _apply(self, edit: LayerEdit, layer: int, h: torch.Tensor, cached: bool) -> torch.Tensor | None:
        width = h.shape[1]
        w, mask = self.window(width, cached)
        if w <= 0:
            return None
        if mask is not None and mask.device != h.device:  # a model spread over several devices
            mask = mask.to(h.device)
        if w >= width:
            return edit(layer, h, mask)
        return torch.cat([h[:, : width - w], edit(layer, h[:, width - w :], mask)], dim=1)

    def _pre_hook(self, layer: int) -> Any:
        edit = self.edits[layer]

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            h = _hidden_arg(args, kwargs)
            new = self._apply(edit, layer, h, _has_cache(kwargs))
            return None if new is None else _with_hidden(args, kwargs, new)

        return hook

    def _post_hook(self, layer: int, edit: LayerEdit) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            new = self._apply(edit, layer, h, _has_cache(kwargs))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def __enter__(self) -> "SteeringSession":
        if self._handles:
            raise SteeringError("this steering session is already attached")
        try:
            for layer in sorted(self.edits):
                self._handles.append(
                    self._layers[layer].register_forward_pre_hook(self._pre_hook(layer), with_kwargs=True)
                )
            if self.final_output is not None:
                last = len(self._layers) - 1
                self._handles.append(
                    self._layers[last].register_forward_hook(
                        self._post_hook(len(self._layers), self.final_output), with_kwargs=True
                    )
                )
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()
        self.clear()


class NoSteer:
    """The unsteered model (and the model's own system prompt)."""

    name = "none"
    system_prompt: str | None = None

    def attach(self, model: nn.Module) -> SteeringSession:
        return SteeringSession(model, {})


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(i) for i in layers}))
    if not out:
        raise SteeringError("no layers to steer")
    return out


__all__ = [
    "LayerEdit",
    "NoSteer",
    "Positions",
    "Steerer",
    "SteeringError",
    "SteeringSession",
    "check_layers",
    "find_decoder_layers",
]
