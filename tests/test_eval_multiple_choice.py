"""Multiple-choice scoring (lm-eval protocol) against a hand-computed example.

The model is a bigram table: p(next | previous token) is given explicitly, so each choice's
log-likelihood is a product of table entries that can be written down by hand.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eds.datasets import ChoiceItem
from eds.models import LoadedModel
from eds.multiple_choice import accuracy, choice_logliks, encode_pair, mc_prompt, predict, requests_for, score_choices, with_system

SIZE = 128
VOCAB = ["<pad>"]  # grows as the tokenizer meets new words (at most SIZE)
_TOKEN = re.compile(r" ?[A-Za-z0-9]+|\S|\s")


def token_id(token: str) -> int:
    if token not in VOCAB:
        VOCAB.append(token)
    assert len(VOCAB) <= SIZE
    return VOCAB.index(token)


class WordTokenizer:
    """Splits like a GPT pre-tokenizer (a leading space sticks to the word)."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [token_id(t) for t in _TOKEN.findall(text)]}


class Bigram(nn.Module):
    """logits[t] = log p(. | token t): the table below, uniform for unlisted previous tokens."""

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        super().__init__()
        logits = torch.full((SIZE, SIZE), 0.0)
        for prev, dist in table.items():
            rest = (1.0 - sum(dist.values())) / (SIZE - len(dist))
            row = torch.full((SIZE,), math.log(rest))
            for tok, p in dist.items():
                row[token_id(tok)] = math.log(p)
            logits[token_id(prev)] = row
        self.table = nn.Embedding.from_pretrained(logits, freeze=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table(input_ids))


LETTER_TABLE = {":": {" A": 0.5, " B": 0.2, " C": 0.2, " D": 0.05}}
ARC_TABLE = {":": {" Paris": 0.4, " New": 0.3}, " New": {" York": 0.9}}


def bigram(table: dict[str, dict[str, float]]) -> LoadedModel:
    return LoadedModel(Bigram(table), WordTokenizer(), name="bigram", device=torch.device("cpu"))  # type: ignore[arg-type]


def test_mmlu_format_matches_lm_eval_template() -> None:
    item = ChoiceItem("m:0", "mmlu", " What? ", ("a", "b", "c", "d"), 2, "high_school_physics")
    context, continuations = requests_for(item, "mmlu")
    assert context == ("The following are multiple choice questions (with answers) about high school physics.\n\n"
                       "What?\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    assert context == mc_prompt(item.question, item.choices, item.subject)
    assert continuations == [" A", " B", " C", " D"]


def test_arc_format_and_system_prompt() -> None:
    item = ChoiceItem("a:0", "arc_challenge", "Capital of France?", ("Paris", "New York"), 0)
    assert requests_for(item, "arc") == ("Question: Capital of France?\nAnswer:", [" Paris", " New York"])
    assert with_system("Question: x", "Be safe.") == "Be safe.\n\nQuestion: x"
    assert with_system("Question: x", None) == "Question: x"


def test_encode_pair_moves_trailing_space_into_the_continuation() -> None:
    tok = WordTokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    assert [VOCAB[i] for i in ctx] == ["Answer", ":"]  # the pair is split after encoding it whole
    assert [VOCAB[i] for i in cont] == [" A"]


def test_letter_logliks_are_the_hand_computed_table_entries() -> None:
    loaded = bigram(LETTER_TABLE)
    item = ChoiceItem("q:0", "demo_mc", "Q", ("x", "x", "x", "x"), 2)
    # Context ends in ":" after "Answer"; the next-token table after ":" gives the letters directly.
    (row,) = choice_logliks(loaded, [item], "mmlu")
    assert row == pytest.approx([math.log(0.5), math.log(0.2), math.log(0.2), math.log(0.05)], abs=1e-6)
    (result,) = score_choices(loaded, [item], "mmlu")
    assert result.pred == 0 and not result.correct
    assert predict(loaded, [item]) == [0]
    assert accuracy(loaded, [item, ChoiceItem("q:1", "demo_mc", "Q", ("x",) * 4, 0)]) == 0.5


def test_arc_acc_and_acc_norm_by_hand() -> None:
    """" Paris": log 0.4; " New York": log 0.3 + log 0.9 = log 0.27.
    acc picks Paris; acc_norm divides by characters (5 vs 8): -0.183 < -0.164, so it picks New York."""
    loaded = bigram(ARC_TABLE)
    item = ChoiceItem("a:0", "arc_challenge", "Q", ("Paris", "New York"), 1)
    (row,) = choice_logliks(loaded, [item], "arc")
    assert row == pytest.approx([math.log(0.4), math.log(0.3) + math.log(0.9)], abs=1e-6)
    (result,) = score_choices(loaded, [item], "arc")
    assert result.pred == 0 and not result.correct
    assert result.pred_norm == 1 and result.correct_norm
    assert math.log(0.4) / 5 < math.log(0.27) / 8


def test_batching_and_order_do_not_change_scores() -> None:
    loaded = bigram(ARC_TABLE)
    items = [ChoiceItem(f"a:{i}", "arc_challenge", "Q " * (i + 1), ("Paris", "New York"), 0) for i in range(5)]
    one = choice_logliks(loaded, items, "arc", batch_size=1)
    many = choice_logliks(loaded, items, "arc", batch_size=4)
    assert sum(one, []) == pytest.approx(sum(many, []), abs=1e-6)


def test_steered_scoring_on_a_tiny_llama_matches_unsteered_with_no_steer(tiny_model_dir) -> None:  # noqa: ANN001
    from eds.config import ModelConfig
    from eds.models import load_model
    from eds.steerers import MeanDiffSteerer
    from eds.steering import NoSteer

    torch.manual_seed(0)
    tiny = load_model(ModelConfig(id=str(tiny_model_dir), device="cpu"))
    items = [ChoiceItem("m:0", "mmlu", "What is 2+2?", ("3", "4", "5", "6"), 1, "math"),
             ChoiceItem("a:0", "arc_challenge", "Which is a gas?", ("oxygen at room temperature", "iron"), 0)]
    plain = choice_logliks(tiny, items[:1], "mmlu") + choice_logliks(tiny, items[1:], "arc")
    none = choice_logliks(tiny, items[:1], "mmlu", NoSteer()) + choice_logliks(tiny, items[1:], "arc", NoSteer())
    assert plain == none
    steered = choice_logliks(tiny, items[:1], "mmlu", MeanDiffSteerer({1: torch.ones(32) * 3.0}))
    assert steered != plain[:1]
    # The letter fast path (one forward per question) equals the general path (one per choice).
    from eds.scoring import steered_loglik

    context, continuations = requests_for(items[0], "mmlu")
    general = steered_loglik(tiny, [context] * 4, continuations)
    assert plain[0] == pytest.approx(general, abs=1e-4)
