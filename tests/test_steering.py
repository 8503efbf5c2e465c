"""The steering engine on tiny random decoders: positions, KV-cache and padding parity, hooks,
layer discovery, static cache and torch.compile."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, CompileConfig

from eds.ebm import EBMSpec, EnergyMLP, save_ebm
from eds.generation import Decoding, generate, generate_batch
from eds.models import LoadedModel
from eds.scoring import steered_generate
from eds.steerers import EnergySteerer
from eds.steering import NoSteer, SteeringError, SteeringSession, find_decoder_layers

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who learns to bake bread in a small village.",
    "What is 2 + 2?",
    "List three colours.",
]
DEC = Decoding(max_new_tokens=6, batch_size=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def energy_steerer(dim: int = 32, layers: tuple[int, ...] = (0, 1), **kwargs: Any) -> EnergySteerer:
    dropout = kwargs.pop("dropout", 0.0)
    ebms = {}
    for layer in layers:
        torch.manual_seed(100 + layer)
        ebms[layer] = EnergyMLP(EBMSpec(dim, (16, 8), dropout=dropout))
    options = {"eta": 0.01, "steps": 2, "normalize": "unit", **kwargs}
    return EnergySteerer(ebms, **options)


def hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class Probe:
    """Records a decoder layer's input before and after the steering hooks of a session."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.before: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []
        self._first = layer.register_forward_pre_hook(self._record(self.before), with_kwargs=True, prepend=True)
        self._last: Any = None

    @staticmethod
    def _record(store: list[torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store.append(hidden_of(args, kwargs).detach().clone())

        return hook

    def arm(self) -> None:
        """Call after the session is entered, so this hook runs after the steering hook."""
        self._last = self.layer.register_forward_pre_hook(self._record(self.after), with_kwargs=True)

    def remove(self) -> None:
        self._first.remove()
        if self._last is not None:
            self._last.remove()

    def edited(self) -> list[torch.Tensor]:
        """Per forward pass: a [B, T] bool of the positions the steering hook changed."""
        return [(a != b).any(dim=-1) for a, b in zip(self.after, self.before)]


def texts(gens: list[Any]) -> list[str]:
    return [g.text for g in gens]


# --------------------------------------------------------------------------------- parity


def test_no_steer_equals_plain_generation(tiny: LoadedModel) -> None:
    assert steered_generate(tiny, PROMPTS, DEC, NoSteer()) == generate(tiny, PROMPTS, DEC)


def test_kv_cache_and_recompute_give_the_same_steered_tokens(tiny: LoadedModel) -> None:
    steerer = energy_steerer()
    cached = steered_generate(tiny, PROMPTS, DEC, steerer)
    recomputed = steered_generate(tiny, PROMPTS, DEC, steerer, use_cache=False)
    assert texts(cached) == texts(recomputed)
    assert texts(cached) != texts(generate(tiny, PROMPTS, DEC))  # steering changed the output
    assert len(set(texts(cached))) > 1


def test_left_padded_batch_equals_each_row_alone(tiny: LoadedModel) -> None:
    steerer = energy_steerer(normalize="none")
    batched = steered_generate(tiny, PROMPTS, DEC, steerer)
    alone = [steered_generate(tiny, [p], Decoding(max_new_tokens=6, batch_size=1), steerer)[0] for p in PROMPTS]
    assert texts(batched) == texts(alone)
    assert len({g.n_prompt_tokens for g in batched}) > 1  # the batch really was padded
    assert texts(batched) != texts(generate(tiny, PROMPTS, DEC))


@pytest.mark.parametrize("use_cache", [True, False])
def test_steered_positions_are_last_prompt_token_and_generated_ones(tiny: LoadedModel, use_cache: bool) -> None:
    steerer = energy_steerer()
    chats = [tiny.chat(p) for p in PROMPTS]
    enc = tiny.tokenizer(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    width, pads = enc["input_ids"].shape[1], enc["attention_mask"] == 0
    probe = Probe(find_decoder_layers(tiny.model)[1])
    try:
        with steerer.attach(tiny.model) as session:
            probe.arm()
            generate_batch(tiny, chats, Decoding(max_new_tokens=4), session.generating, use_cache=use_cache)
    finally:
        probe.remove()
    edits = probe.edited()
    assert len(edits) == 4
    prefill = edits[0]
    assert prefill.shape == (len(PROMPTS), width)
    assert prefill[:, -1].all() and not prefill[:, :-1].any()  # each row's own last real token, no padding
    for step, edited in enumerate(edits[1:], start=1):
        if use_cache:
            assert edited.shape[1] == 1 and edited.all()
        else:  # recomputed from scratch: everything from the last prompt token on, padding never
            assert edited.shape[1] == width + step
            assert edited[:, width - 1 :].all() and not edited[:, : width - 1].any()
            assert not edited[:, :width][pads].any()


def test_unprepared_session_steers_every_position(tiny: LoadedModel) -> None:
    steerer = energy_steerer(layers=(0,))
    ids = tiny.tokenizer(["one two three four"], return_tensors="pt")["input_ids"]
    probe = Probe(find_decoder_layers(tiny.model)[0])
    try:
        with steerer.attach(tiny.model):
            probe.arm()
            tiny.model(input_ids=ids, use_cache=False)
    finally:
        probe.remove()
    assert probe.edited()[0].all()


# --------------------------------------------------------------------------------- hooks


def test_hooks_are_removed_on_exit_and_ebms_are_in_eval_mode(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer(["The weather today"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = tiny.model(input_ids=ids).logits
    steerer = energy_steerer(dropout=0.5)
    for ebm in steerer.ebms.values():
        ebm.train()
    with steerer.attach(tiny.model):
        assert not any(ebm.training for ebm in steerer.ebms.values())
        with torch.no_grad():
            steered = tiny.model(input_ids=ids).logits
            again = tiny.model(input_ids=ids).logits
    assert torch.equal(steered, again)  # no dropout: repeated runs identical
    assert not torch.equal(steered, before)
    assert all(not layer._forward_pre_hooks for layer in find_decoder_layers(tiny.model))
    with torch.no_grad():
        assert torch.equal(tiny.model(input_ids=ids).logits, before)


def test_hooks_are_removed_when_generation_raises(tiny: LoadedModel) -> None:
    steerer = energy_steerer()
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.attach(tiny.model):
            raise RuntimeError("boom")
    assert all(not layer._forward_pre_hooks for layer in find_decoder_layers(tiny.model))


def test_threshold_controls_firing(tiny: LoadedModel) -> None:
    never = energy_steerer(threshold=1e9)
    assert texts(steered_generate(tiny, PROMPTS, DEC, never)) == texts(generate(tiny, PROMPTS, DEC))
    stats = never.stats()
    assert stats.fired == 0 and stats.considered > 0
    always = energy_steerer(threshold=-1e9)
    steered_generate(tiny, PROMPTS, DEC, always)
    stats = always.stats()
    # 4 rows x 2 layers at prefill + 4 rows x 2 layers x (new tokens - 1) decode steps
    assert stats.fired == stats.considered and stats.considered >= 4 * 2 * DEC.max_new_tokens - 8
    assert stats.rate == 1.0
    unconditional = energy_steerer()
    steered_generate(tiny, PROMPTS, DEC, unconditional)
    assert unconditional.stats() == stats  # counted on the host, same figures


def test_energy_steerer_from_saved_artifacts(tiny: LoadedModel, tmp_path: Path) -> None:
    steerer = energy_steerer()
    for layer, ebm in steerer.ebms.items():
        save_ebm(tmp_path / f"layer{layer}", ebm, {"layer": layer})
    loaded = EnergySteerer.from_files(
        {layer: tmp_path / f"layer{layer}" for layer in (0, 1)}, hidden_size=32, eta=0.01, steps=2, normalize="unit"
    )
    assert texts(steered_generate(tiny, PROMPTS, DEC, loaded)) == texts(steered_generate(tiny, PROMPTS, DEC, steerer))


def test_wrong_sizes_and_layers_are_refused(tiny: LoadedModel) -> None:
    with pytest.raises(SteeringError, match="hidden size"):
        energy_steerer(dim=16).attach(tiny.model)
    with pytest.raises(SteeringError, match="out of range"):
        energy_steerer(layers=(5,)).attach(tiny.model)
    session = SteeringSession(tiny.model, {})
    with pytest.raises(SteeringError):
        session.prepare_generation(0)


# --------------------------------------------------------------------------------- families


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 64}


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [("llama", {}), ("qwen2", {}), ("qwen3", {"head_dim": 8}), ("mistral", {}), ("gemma", {"head_dim": 8}),
     ("gemma2", {"head_dim": 8})],
)
def test_layer_discovery_and_steering_across_families(model_type: str, extra: dict[str, Any]) -> None:
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    layers = find_decoder_layers(model)
    assert layers is model.model.layers and len(layers) == 3
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        steerer = energy_steerer(layers=(1, 2), eta=0.5)
        with steerer.attach(model):
            steered = model(input_ids=ids).logits
            cached = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            full = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0, use_cache=False)
    assert not torch.allclose(plain, steered)
    assert torch.equal(cached, full)


def test_layer_discovery_on_a_plain_module_list() -> None:
    class Block(nn.Module):
        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
            return (hidden_states * 2,)

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = nn.ModuleList([nn.LayerNorm(4)])
            self.blocks = nn.ModuleList([Block(), Block(), Block()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(hidden_states=x)[0]  # keyword hidden states, tuple output
            return x

    toy = Toy()
    assert find_decoder_layers(toy) is toy.blocks

    class AddOne:
        def __call__(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            return h + 1

    x = torch.zeros(1, 3, 4)
    with SteeringSession(toy, {0: AddOne(), 2: AddOne()}, positions="all", final_output=AddOne()):
        out = toy(x)
    assert torch.equal(out, torch.full((1, 3, 4), ((0 + 1) * 2 * 2 + 1) * 2 + 1.0))
    assert torch.equal(toy(x), x)


# --------------------------------------------------------------------------------- static cache, compile


def test_static_cache_matches_dynamic_cache(tiny: LoadedModel) -> None:
    steerer = energy_steerer()
    dynamic = steered_generate(tiny, PROMPTS, DEC, steerer)
    static = steered_generate(tiny, PROMPTS, DEC, steerer, cache_implementation="static")
    assert texts(static) == texts(dynamic)


def test_compiled_static_decode_step_has_no_graph_breaks(tiny: LoadedModel) -> None:
    """HF's own static-cache compile of the decode step, forced on CPU, fullgraph, dynamo only.

    Two batches of the same size but different prompt widths share one graph: the decode path
    reads no per-batch state.
    """
    graphs: list[int] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    config = CompileConfig(fullgraph=True, backend=backend, mode=None)
    config._compile_all_devices = True
    steerer = energy_steerer()
    dec = Decoding(max_new_tokens=4, batch_size=2)
    prompts = PROMPTS[:2] + PROMPTS[2:]  # two batches of 2 with different widths
    eager = steered_generate(tiny, prompts, dec, steerer, cache_implementation="static")
    compiled = steered_generate(tiny, prompts, dec, steerer, cache_implementation="static", compile_config=config)
    try:
        assert texts(compiled) == texts(eager)
        assert len(graphs) == 1
    finally:
        for attr in ("_compiled_call", "_last_compile_config"):
            if hasattr(tiny.model, attr):
                delattr(tiny.model, attr)
