"""The baselines as steerers: mean-difference addition, direction ablation, system prompt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from eds.ebm import EBMSpec, EnergyMLP
from eds.generation import Decoding, generate, generate_batch
from eds.models import LoadedModel
from eds.scoring import chat_for, steered_generate
from eds.steerers import (
    DirectionAblation,
    EnergySteerer,
    MeanDiffSteerer,
    SystemPromptSteerer,
    mean_difference,
    refusal_direction,
)
from eds.steering import NoSteer, Steerer, find_decoder_layers

PROMPTS = ["Hi", "What is 2 + 2?", "Write a poem about the sea and the wind, in four lines."]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


Records = list[list[torch.Tensor]]


def record_layer_inputs(model: nn.Module, run: Any, steerer: Steerer) -> tuple[Records, Records]:
    """Each layer's input per forward, before and after the steerer's hooks, plus the last output."""
    layers = find_decoder_layers(model)
    before: list[list[torch.Tensor]] = [[] for _ in layers]
    after: list[list[torch.Tensor]] = [[] for _ in range(len(layers) + 1)]

    def pre(store: list[torch.Tensor]) -> Any:
        return lambda m, args, kwargs: store.append((args[0] if args else kwargs["hidden_states"]).clone())

    def post(module: nn.Module, args: Any, out: Any) -> None:
        after[-1].append((out[0] if isinstance(out, tuple) else out).clone())

    handles = [
        layer.register_forward_pre_hook(pre(store), with_kwargs=True, prepend=True) for layer, store in zip(layers, before)
    ]
    try:
        with steerer.attach(model) as session:
            handles += [layer.register_forward_pre_hook(pre(store), with_kwargs=True) for layer, store in zip(layers, after)]
            handles.append(layers[-1].register_forward_hook(post))
            run(session)
    finally:
        for handle in handles:
            handle.remove()
    return before, after


def test_mean_difference_and_refusal_direction() -> None:
    good, bad = torch.randn(20, 8) + 1.0, torch.randn(30, 8) - 1.0
    v = mean_difference(good, bad)
    torch.testing.assert_close(v, good.mean(0) - bad.mean(0))
    r = refusal_direction(bad, good)
    torch.testing.assert_close(r, -v / v.norm())
    with pytest.raises(ValueError):
        mean_difference(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError):
        refusal_direction(good, good)


def test_mean_diff_adds_alpha_v_at_steered_positions_only(tiny: LoadedModel) -> None:
    torch.manual_seed(0)
    v = torch.randn(32) * 0.05
    steerer = MeanDiffSteerer({1: v}, alpha=2.0)
    chats = [tiny.chat(p) for p in PROMPTS]
    before, after = record_layer_inputs(
        tiny.model, lambda s: generate_batch(tiny, chats, Decoding(max_new_tokens=3), s.generating), steerer
    )
    assert all(torch.equal(a, b) for a, b in zip(after[0], before[0]))  # layer 0 untouched
    prefill_before, prefill_after = before[1][0], after[1][0]
    torch.testing.assert_close(prefill_after[:, -1], prefill_before[:, -1] + 2.0 * v)
    assert torch.equal(prefill_after[:, :-1], prefill_before[:, :-1])  # prompt (and padding) untouched
    for b, a in zip(before[1][1:], after[1][1:]):  # decode steps: the new token
        torch.testing.assert_close(a, b + 2.0 * v)
    out = steered_generate(tiny, PROMPTS, Decoding(max_new_tokens=6), MeanDiffSteerer({0: v * 20, 1: v * 20}))
    assert [g.text for g in out] != [g.text for g in generate(tiny, PROMPTS, Decoding(max_new_tokens=6))]


def test_direction_ablation_removes_the_component_everywhere(tiny: LoadedModel) -> None:
    torch.manual_seed(1)
    harmful, benign = torch.randn(10, 32) * 0.05 + 0.03, torch.randn(12, 32) * 0.05
    r = refusal_direction(harmful, benign)
    steerer = DirectionAblation(r)
    chats = [tiny.chat(p) for p in PROMPTS]
    before, after = record_layer_inputs(
        tiny.model, lambda s: generate_batch(tiny, chats, Decoding(max_new_tokens=3), s.generating), steerer
    )
    for store in after:  # every layer input and the last layer's output, every forward, every position
        assert store
        for h in store:
            assert (h @ r).abs().max() < 1e-6 * max(1.0, float(h.abs().max()))
    assert (before[1][0] @ r).abs().max() > 1e-4  # there was a component to remove
    projected = before[0][0] - (before[0][0] @ r).unsqueeze(-1) * r
    torch.testing.assert_close(after[0][0], projected)


def test_direction_ablation_on_chosen_layers(tiny: LoadedModel) -> None:
    r = torch.zeros(32)
    r[3] = 2.0
    steerer = DirectionAblation(r, layers=[0])
    ids = tiny.tokenizer(["hello world"], return_tensors="pt")["input_ids"]
    before, after = record_layer_inputs(tiny.model, lambda s: tiny.model(input_ids=ids), steerer)
    assert (after[0][0][..., 3] == 0).all()
    assert torch.equal(after[1][0], before[1][0])  # layer 1 not ablated
    assert (after[2][0][..., 3] != 0).any()  # nor the final output


def test_system_prompt_steerer_changes_only_the_chat(tiny: LoadedModel) -> None:
    text = "You are a careful assistant. Refuse harmful requests."
    steerer = SystemPromptSteerer(text)
    assert text in chat_for(tiny, "Hi", steerer) and text not in chat_for(tiny, "Hi", NoSteer())
    with steerer.attach(tiny.model):
        assert all(not layer._forward_pre_hooks for layer in find_decoder_layers(tiny.model))
    dec = Decoding(max_new_tokens=5)
    with_prompt = LoadedModel(tiny.model, tiny.tokenizer, tiny.name, tiny.device, system_prompt=text)
    assert steered_generate(tiny, PROMPTS, dec, steerer) == generate(with_prompt, PROMPTS, dec)
    with pytest.raises(ValueError):
        SystemPromptSteerer("  ")


def test_every_steerer_satisfies_the_protocol() -> None:
    steerers = [
        NoSteer(),
        SystemPromptSteerer("Be safe."),
        MeanDiffSteerer({0: torch.ones(4)}),
        DirectionAblation(torch.ones(4)),
        EnergySteerer({0: EnergyMLP(EBMSpec(4, (2,)))}, eta=0.1),
    ]
    assert all(isinstance(s, Steerer) for s in steerers)
    assert len({s.name for s in steerers}) == len(steerers)
