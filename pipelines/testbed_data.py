"""Training and held-out prompts of the cautious testbed (pipelines/testbed.py).

Harmful prompts: seeded samples of AdvBench and OR-Bench toxic, minus every prompt whose normalised
text appears in an evaluation benchmark. Benign prompts: Alpaca instructions. The held-out Alpaca
prompts (the "plain benign instructions" the tuned model must still answer) are drawn first, with a
seed of their own, so they do not change with the training mix. Training Alpaca prompts can be
drawn to match the opening words of the harmful prompts (``alpaca_match_openings``): AdvBench goals
open with "Write", "Create", "Develop", ...; with benign prompts drawn uniformly the opening verb
alone predicts "refuse", and the tuned model refuses plain imperative tasks.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from eds import datasets
from eds.config import Params, TestbedConfig
from eds.datasets import PromptItem, text_key

EVAL_SETS = ("orb_h", "xstest", "jbb_harmful", "jbb_benign", "harmbench")  # prompt benchmarks never trained on


def eval_keys(params: Params) -> set[str]:
    """text_keys of every prompt of every evaluation benchmark (all splits): never trained on."""
    keys: set[str] = set()
    for name in EVAL_SETS:
        spec = datasets.REGISTRY[name]
        for split in spec.splits:
            for item in datasets.load(name, split=split, root=params.data_root()):
                keys.add(text_key(item.prompt))  # type: ignore[union-attr]
    return keys


def pick(params: Params, cfg: TestbedConfig, name: str, n: int, banned: set[str], salt: str) -> tuple[list[PromptItem], int]:
    """``n`` seeded prompts of a dataset that are not banned; also returns how many were dropped."""
    items = [i for i in datasets.load(name, root=params.data_root()) if isinstance(i, PromptItem)]
    kept = [i for i in items if text_key(i.prompt) not in banned]
    dropped = len(items) - len(kept)
    rng = random.Random(f"{cfg.seed}:{salt}:{name}")
    chosen = sorted(rng.sample(range(len(kept)), min(n, len(kept))))
    return [kept[i] for i in chosen], dropped


def opening(text: str) -> str:
    """The first word, lower-cased, without punctuation ("Write a script ..." -> "write")."""
    words = text.split()
    return words[0].strip(".,:;!?\"'()").lower() if words else ""


def quotas(counts: Counter[str], n: int) -> dict[str, int]:
    """``n`` split over the keys of ``counts`` in proportion (largest remainder, ties by name)."""
    total = sum(counts.values())
    if total == 0 or n == 0:
        return {}
    exact = {w: n * c / total for w, c in counts.items()}
    out = {w: int(x) for w, x in exact.items()}
    rest = sorted(exact, key=lambda w: (-(exact[w] - out[w]), w))[: n - sum(out.values())]
    for w in rest:
        out[w] += 1
    return out


def match_openings(pool: Sequence[PromptItem], like: Sequence[PromptItem], n: int, rng: random.Random) -> list[int]:
    """Indices into ``pool`` of at most ``n`` prompts whose opening words follow those of ``like``
    (a word missing from ``pool`` gives up its share; the caller fills the shortfall)."""
    by_word: dict[str, list[int]] = {}
    for i, item in enumerate(pool):
        by_word.setdefault(opening(item.prompt), []).append(i)
    chosen: list[int] = []
    for word, k in sorted(quotas(Counter(opening(i.prompt) for i in like), n).items()):
        candidates = by_word.get(word, [])
        chosen += rng.sample(candidates, min(k, len(candidates)))
    return chosen


def alpaca_prompts(
    params: Params, cfg: TestbedConfig, harmful: Sequence[PromptItem], banned: set[str]
) -> tuple[list[PromptItem], list[PromptItem]]:
    """(training, held-out) Alpaca prompts, disjoint; held-out is a uniform seeded sample."""
    rows = datasets.load("alpaca", root=params.data_root())
    items = [i for i in rows if isinstance(i, PromptItem) and text_key(i.prompt) not in banned]
    held = set(random.Random(f"{cfg.seed}:alpaca_heldout").sample(range(len(items)), cfg.eval.alpaca_heldout))
    pool = [i for i in range(len(items)) if i not in held]
    if cfg.alpaca > len(pool):
        raise ValueError(f"testbed.alpaca={cfg.alpaca}: only {len(pool)} Alpaca prompts are left after the held-out ones")
    rng = random.Random(f"{cfg.seed}:alpaca")
    n_matched = round(cfg.alpaca_match_openings * cfg.alpaca)
    matched = [pool[i] for i in match_openings([items[j] for j in pool], harmful, n_matched, rng)]
    taken = set(matched)
    rest = [j for j in pool if j not in taken]
    chosen = matched + rng.sample(rest, cfg.alpaca - len(matched))
    return [items[j] for j in sorted(chosen)], [items[j] for j in sorted(held)]


def training_prompts(params: Params, cfg: TestbedConfig) -> dict[str, Any]:
    """Harmful and benign training prompts, the held-out Alpaca prompts, and the overlap dropped."""
    banned = eval_keys(params)
    advbench, drop_adv = pick(params, cfg, "advbench", cfg.advbench, banned, "train")
    toxic, drop_tox = pick(params, cfg, "orb_toxic", cfg.orb_toxic, banned, "train")
    alpaca, heldout = alpaca_prompts(params, cfg, advbench + toxic, banned)
    return {
        "harmful": advbench + toxic,
        "benign": alpaca,
        "alpaca_heldout": heldout,
        "dropped_overlap": {"advbench": drop_adv, "orb_toxic": drop_tox},
    }
