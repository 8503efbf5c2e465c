"""LoRA fine-tuning used by the testbed: masking, determinism, learning, half-precision adapters."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from eds.config import ModelConfig
from eds.finetune import IGNORE, LoraSettings, build_example, collate, save_adapter, train_lora
from eds.models import load_model, load_tokenizer

PAIRS = [("How do I pick a lock?", "I'm sorry, but I can't help with that."), ("Name a colour.", "Blue.")]
SETTINGS = LoraSettings(rank=4, alpha=8, epochs=6.0, batch_size=2, max_length=64, lr=1e-2, warmup_steps=1)


def _examples(tiny_model_dir: Path) -> list:
    tok = load_tokenizer(ModelConfig(id=str(tiny_model_dir)))
    return [build_example(tok, p, r, None, 64) for p, r in PAIRS], tok


def test_only_the_response_and_eos_are_trained_on(tiny_model_dir: Path) -> None:
    (example, _), tok = _examples(tiny_model_dir)
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert tok.decode(trained) == "I'm sorry, but I can't help with that." + tok.eos_token
    assert example.labels[: len(example.labels) - len(trained)] == [IGNORE] * (len(example.labels) - len(trained))
    batch = collate(_examples(tiny_model_dir)[0], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


def test_training_is_seeded_and_lowers_the_loss(tiny_model_dir: Path) -> None:
    examples, tok = _examples(tiny_model_dir)
    runs = []
    for _ in range(2):
        losses: list[float] = []
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        tuned = train_lora(model, tok, examples, SETTINGS, on_step=lambda s, l: losses.append(l))
        runs.append((losses, {k: v.clone() for k, v in tuned.state_dict().items() if "lora_" in k}))
    (first, state_a), (second, state_b) = runs
    assert first == second
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert second[-1] < second[0] - 0.1  # a random 2-layer model learns slowly, but it learns


def test_half_precision_adapter_is_small_and_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    examples, tok = _examples(tiny_model_dir)
    tuned = train_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, examples, SETTINGS)
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        expected = tuned(ids).logits
    size = save_adapter(tuned, tmp_path / "adapter")
    lora_params = sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n)
    assert size < lora_params * 2 + 64_000  # float16 weights plus small JSON/header overhead
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), adapter=str(tmp_path / "adapter")))
    with torch.no_grad():
        got = loaded.model(ids).logits
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=5e-3)
