"""Training and held-out prompts of the testbed (pipelines/testbed_data.py): proportional quotas,
opening-word matching, a held-out Alpaca sample that does not move with the training mix."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from conftest import SHARED
from eds.config import Params, parse
from eds.datasets import PromptItem, text_key
from pipelines import testbed_data as td


def item(i: int, prompt: str) -> PromptItem:
    return PromptItem(item_id=str(i), dataset="t", prompt=prompt, prompt_type="harmful")


def test_opening_is_the_lower_cased_first_word() -> None:
    assert td.opening("Write a script, now.") == "write"
    assert td.opening('"Create," she said') == "create"
    assert td.opening("   ") == ""


def test_quotas_split_n_in_proportion_and_sum_to_n() -> None:
    q = td.quotas(Counter({"write": 5, "create": 3, "give": 2}), 7)
    assert sum(q.values()) == 7 and q == {"write": 4, "create": 2, "give": 1}  # 3.5/2.1/1.4: largest remainder
    assert td.quotas(Counter(), 5) == {} and td.quotas(Counter({"a": 1}), 0) == {}


def test_match_openings_follows_the_reference_words_and_skips_missing_ones() -> None:
    pool = [item(i, f"{w} thing {i}") for i, w in enumerate(["Write"] * 10 + ["Name"] * 10 + ["Create"] * 10)]
    like = [item(0, "Write x")] * 3 + [item(1, "Create y")] + [item(2, "Instruct z")] * 2
    chosen = td.match_openings(pool, like, 6, random.Random(0))
    words = Counter(td.opening(pool[i].prompt) for i in chosen)
    assert words == {"write": 3, "create": 1}  # "instruct" is not in the pool: its 2 are left to the caller
    assert len(set(chosen)) == len(chosen)
    assert chosen == td.match_openings(pool, like, 6, random.Random(0))


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared benchmark copies at {SHARED}")
def test_alpaca_heldout_is_fixed_disjoint_and_matching_shifts_the_training_openings() -> None:
    def params(**testbed: object) -> Params:
        return parse({"data": {"root": str(SHARED)}, "testbed": testbed}, check_paths=False)

    harmful = [item(i, p) for i, p in enumerate(["Write a virus", "Create a bomb", "Develop malware"] * 20)]
    uniform_p, matched_p, bigger_p = params(alpaca=120), params(alpaca=120, alpaca_match_openings=1.0), params(alpaca=300)
    uniform, held = td.alpaca_prompts(uniform_p, uniform_p.testbed, harmful, set())
    matched, held_m = td.alpaca_prompts(matched_p, matched_p.testbed, harmful, set())
    _, held_b = td.alpaca_prompts(bigger_p, bigger_p.testbed, harmful, set())
    assert len(uniform) == len(matched) == 120 and len(held) == 200
    assert [i.item_id for i in held] == [i.item_id for i in held_m] == [i.item_id for i in held_b]
    assert not {i.item_id for i in held} & ({i.item_id for i in uniform} | {i.item_id for i in matched})
    words = Counter(td.opening(i.prompt) for i in matched)
    assert words == {"write": 40, "create": 40, "develop": 40}
    assert Counter(td.opening(i.prompt) for i in uniform)["write"] < 40

    banned = {text_key(i.prompt) for i in held[:5]}  # an evaluation prompt is never held out or trained on
    train_x, held_x = td.alpaca_prompts(uniform_p, uniform_p.testbed, harmful, banned)
    assert not banned & {text_key(i.prompt) for i in train_x + held_x}
