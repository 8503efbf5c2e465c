"""Steered log-likelihood: padding sides agree, and it equals steered decoding token by token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from eds.ebm import EBMSpec, EnergyMLP
from eds.models import LoadedModel
from eds.scoring import chat_for, steered_loglik
from eds.steerers import EnergySteerer, MeanDiffSteerer, SystemPromptSteerer
from eds.steering import NoSteer, Steerer

CONTEXTS = [
    "Question: what colour is the sky? Answer:",
    "2 + 2 =",
    "The capital of France is a city called",
    "Q: name a fruit. A:",
]
CONTINUATIONS = [" blue", " 4, of course", " Paris", " a banana or an apple"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def energy_steerer(threshold: float | None = None) -> EnergySteerer:
    ebms = {}
    for layer in (0, 1):
        torch.manual_seed(200 + layer)
        ebms[layer] = EnergyMLP(EBMSpec(32, (16, 8)))
    return EnergySteerer(ebms, eta=0.01, steps=2, normalize="unit", threshold=threshold)


STEERERS = {
    "none": NoSteer,
    "eds": energy_steerer,
    "mean_diff": lambda: MeanDiffSteerer({1: torch.linspace(-0.05, 0.05, 32)}, alpha=3.0),
}


@torch.inference_mode()
def loglik_by_decoding(loaded: LoadedModel, context: str, continuation: str, steerer: Steerer) -> float:
    """The reference: feed the continuation token by token through steered, KV-cached decoding."""
    tok, model = loaded.tokenizer, loaded.model
    ctx = tok(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    total = 0.0
    with steerer.attach(model) as session:
        session.prepare_generation(ctx.shape[1])
        out = model(input_ids=ctx, use_cache=True)
        for j, token in enumerate(cont):
            total += float(torch.log_softmax(out.logits[0, -1].float(), dim=-1)[token])
            if j + 1 < len(cont):
                out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return total


@pytest.mark.parametrize("name", list(STEERERS))
def test_loglik_equals_token_by_token_steered_decoding(tiny: LoadedModel, name: str) -> None:
    steerer = STEERERS[name]()
    batched = steered_loglik(tiny, CONTEXTS, CONTINUATIONS, steerer, batch_size=4)
    reference = [loglik_by_decoding(tiny, c, k, steerer) for c, k in zip(CONTEXTS, CONTINUATIONS)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(reference), rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ["eds", "mean_diff"])
def test_right_and_left_padding_agree_and_steering_matters(tiny: LoadedModel, name: str) -> None:
    steerer = STEERERS[name]()
    right = steered_loglik(tiny, CONTEXTS, CONTINUATIONS, steerer, batch_size=4, padding_side="right")
    left = steered_loglik(tiny, CONTEXTS, CONTINUATIONS, steerer, batch_size=4, padding_side="left")
    single = steered_loglik(tiny, CONTEXTS, CONTINUATIONS, steerer, batch_size=1)
    torch.testing.assert_close(torch.tensor(right), torch.tensor(left), rtol=0, atol=2e-4)
    torch.testing.assert_close(torch.tensor(right), torch.tensor(single), rtol=0, atol=2e-4)
    plain = steered_loglik(tiny, CONTEXTS, CONTINUATIONS, NoSteer(), batch_size=4)
    assert max(abs(a - b) for a, b in zip(right, plain)) > 1e-3


def test_threshold_steerer_counts_only_scored_positions(tiny: LoadedModel) -> None:
    steerer = energy_steerer(threshold=-1e9)
    steered_loglik(tiny, CONTEXTS, CONTINUATIONS, steerer, batch_size=4)
    n_scored = sum(len(tiny.tokenizer(k, add_special_tokens=False)["input_ids"]) for k in CONTINUATIONS)
    stats = steerer.stats()
    assert stats.considered == 2 * n_scored  # two layers, one steered state per scored token
    assert stats.fired == stats.considered


def test_chat_contexts_use_the_steerers_system_prompt(tiny: LoadedModel) -> None:
    steerer = SystemPromptSteerer("Answer briefly and safely.")
    got = steered_loglik(tiny, CONTEXTS[:2], CONTINUATIONS[:2], steerer, chat=True)
    chats = [chat_for(tiny, c, steerer) for c in CONTEXTS[:2]]
    want = steered_loglik(tiny, chats, CONTINUATIONS[:2], NoSteer())
    assert got == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="empty"):
        steered_loglik(tiny, ["context"], [""], NoSteer())
    with pytest.raises(ValueError):
        steered_loglik(tiny, ["a", "b"], ["c"], NoSteer())
