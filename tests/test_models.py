"""Model loading: embedded model, local folders, GGUF files, adapters, devices and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eds.config import ModelConfig
from eds.models import (
    ModelLoadError,
    adapter_digest,
    describe,
    embedded_gguf,
    format_chat,
    load_model,
    load_tokenizer,
    model_record,
    resolve_device,
    resolve_dtype,
)


def test_tiny_folder_loads_for_batched_generation(tiny_model_dir: Path) -> None:
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), device="cpu"))
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token_id is not None
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.device == torch.device("cpu")


def test_dtype_option_is_applied(tiny_model_dir: Path) -> None:
    loaded = load_model(ModelConfig(id=str(tiny_model_dir), dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16


def test_auto_device_and_dtype_on_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_chat_template_and_system_prompt(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(ModelConfig(id=str(tiny_model_dir)))
    plain = format_chat(tokenizer, "How do I bake bread?")
    assert "How do I bake bread?" in plain
    assert plain.rstrip().endswith("assistant")  # generation prompt opens the assistant turn
    custom = format_chat(tokenizer, "How do I bake bread?", system_prompt="You are a careful baker.")
    assert "You are a careful baker." in custom
    assert "SmolLM" not in custom  # our system prompt replaces the template's default one


def test_embedded_model_is_cached_as_a_plain_hf_folder(embedded_dir: Path) -> None:
    assert (embedded_dir / "model.safetensors").is_file()
    assert (embedded_dir / "tokenizer.json").is_file()
    assert embedded_gguf("smollm2-135m-instruct").suffix == ".gguf"
    with pytest.raises(ModelLoadError, match="unknown embedded model"):
        embedded_gguf("nope")


@pytest.mark.integration
def test_gguf_file_loads_directly_and_matches_the_cached_folder(embedded_dir: Path) -> None:
    gguf = embedded_gguf("smollm2-135m-instruct")
    from_gguf = load_model(ModelConfig(id=str(gguf)))
    from_folder = load_model(ModelConfig(id=str(embedded_dir)))
    ids = from_folder.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = from_gguf.model(ids).logits
        b = from_folder.model(ids).logits
    torch.testing.assert_close(a, b)
    assert from_gguf.model.config.num_hidden_layers == 30
    assert from_gguf.model.config.hidden_size == 576


def test_adapter_is_loaded_and_merged(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter do something
            param.data.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    plain = load_model(ModelConfig(id=str(tiny_model_dir)))
    tuned = load_model(ModelConfig(id=str(tiny_model_dir), adapter=str(tmp_path / "adapter")))
    with torch.no_grad():
        got = tuned.model(ids).logits
        untuned = plain.model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(untuned, expected, atol=1e-3)
    assert tuned.name == describe(ModelConfig(id=str(tiny_model_dir), adapter=str(tmp_path / "adapter")))
    assert "+" in tuned.name


def test_model_record_follows_the_adapter_contents_not_just_its_path(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    cfg = ModelConfig(id="org/model", adapter=str(adapter))
    first = model_record(cfg)
    assert first["adapter_sha256"] == adapter_digest(str(adapter)) and first["adapter"] == str(adapter)
    assert model_record(cfg) == first  # stable
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")  # retrained in place
    assert model_record(cfg)["adapter_sha256"] != first["adapter_sha256"]
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (adapter / "adapter_config.json").rename(adapter / "other.json")  # same bytes, other name
    assert model_record(cfg)["adapter_sha256"] != first["adapter_sha256"]
    assert model_record(ModelConfig(id="org/model"))["adapter_sha256"] is None
    assert adapter_digest("org/hub-adapter") is None  # a hub id: its revision is the user's to pin


def test_missing_adapter_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load adapter"):
        load_model(ModelConfig(id=str(tiny_model_dir), adapter=str(tmp_path / "no-adapter")))


@pytest.mark.timeout(120)
def test_hub_id_offline_fails_with_a_hint() -> None:
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model(ModelConfig(id="no-such-org/no-such-model-eds"))


def test_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(ModelConfig(id=str(tmp_path / "missing.gguf")))
