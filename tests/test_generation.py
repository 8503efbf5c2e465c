"""Batched greedy generation: left padding, ordering, truncation, determinism."""

from __future__ import annotations



from eds.generation import Decoding, generate, truncate_prompt
from eds.models import LoadedModel

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who learns to bake bread in a small village.",
    "What is 2 + 2?",
    "List three colours.",
    "Explain photosynthesis in one sentence, please, for a ten year old child.",
]


def test_batched_equals_one_by_one(tiny: LoadedModel) -> None:
    dec = Decoding(max_new_tokens=6, batch_size=5)
    batched = generate(tiny, PROMPTS, dec)
    single = [generate(tiny, [p], Decoding(max_new_tokens=6, batch_size=1))[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.n_prompt_tokens for g in batched] == [g.n_prompt_tokens for g in single]
    assert len({g.n_prompt_tokens for g in batched}) > 1  # the batch really was padded


def test_results_come_back_in_input_order(tiny: LoadedModel) -> None:
    dec = Decoding(max_new_tokens=5, batch_size=2)
    forward = generate(tiny, PROMPTS, dec)
    backward = generate(tiny, PROMPTS[::-1], dec)
    assert [g.n_prompt_tokens for g in forward] == [g.n_prompt_tokens for g in backward][::-1]


def test_deterministic_and_bounded(tiny: LoadedModel) -> None:
    dec = Decoding(max_new_tokens=7, batch_size=3)
    first = generate(tiny, PROMPTS, dec)
    again = generate(tiny, PROMPTS, dec)
    assert first == again
    assert all(1 <= g.n_new_tokens <= 7 for g in first)


def test_long_prompts_keep_their_first_tokens(tiny: LoadedModel) -> None:
    long_prompt = "word " * 400
    text, cut = truncate_prompt(tiny, long_prompt, 16)
    assert cut and len(tiny.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 16
    assert long_prompt.startswith(text.strip()[:20])
    short, cut_short = truncate_prompt(tiny, "short prompt", 16)
    assert (short, cut_short) == ("short prompt", False)
    (result,) = generate(tiny, [long_prompt], Decoding(max_new_tokens=3, max_prompt_tokens=16))
    assert result.truncated
    template_overhead = result.n_prompt_tokens - 16
    assert 0 < template_overhead < 64
