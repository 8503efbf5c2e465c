"""Bad inputs: each case runs the real code path and must fail with a clear error naming the
problem (or show the documented behaviour), leaving no partial artifact that looks valid.

The cases are declarative (params and dataset cases here, artifact and model cases in
``tests/bad_input_cases.py``). Each records what was tried, what is expected and the message
observed; ``test_docs_table_is_current`` renders them into ``docs/bad-inputs.md`` and fails when
the file differs. Regenerate it with::

    EDS_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from bad_input_cases import CASES, Case, Ctx, case
from conftest import BIN, REPO
from eds.config import DATA_ROOT_ENV, ConfigError, deep_merge, load, parse
from eds.datasets import DatasetUnavailable
from reliability_helpers import nothing_left, run_stage_in, write_project

DOC = REPO / "docs" / "bad-inputs.md"
WRITE_ENV = "EDS_WRITE_DOCS"
MAX_SHOWN = 240
AREAS = ["params", "datasets", "prompts", "model", "activation store", "EBM", "training"]  # the table's order


def _repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def _parse_with(override: dict[str, Any], _ctx: Ctx) -> None:
    parse(deep_merge(_repo_params(), override), check_paths=False)


def _inline(override: dict[str, Any]) -> str:
    return yaml.safe_dump(override, default_flow_style=True, width=1000).strip()


# ------------------------------------------------------------------------------ params.yaml (parsed before any work)

PARAMS_CASES = [  # (bad input, override merged into the repo's params.yaml, key the error must name and its text)
    ("unknown key", {"generate": {"beam_width": 4}}, r"generate\.beam_width: unknown key"),
    ("unknown section", {"trainer": {"epochs": 3}}, r"trainer: unknown key"),
    ("wrong type (string for an integer)", {"generate": {"batch_size": "eight"}},
     r"generate\.batch_size: Input should be a valid integer"),
    ("wrong type (float for an integer)", {"train": {"epochs": 2.5}}, r"train\.epochs: Input should be a valid integer"),
    ("wrong type (string for a list)", {"train": {"widths": "256"}}, r"train\.widths: Input should be a valid tuple"),
    ("eta = 0", {"steer": {"eta": 0.0}}, r"steer\.eta: Input should be greater than 0"),
    ("eta < 0", {"steer": {"eta": -1.0}}, r"steer\.eta: Input should be greater than 0"),
    ("eta infinite", {"steer": {"eta": float("inf")}}, r"steer\.eta: Input should be a finite number"),
    ("sweep eta = 0", {"evaluate": {"sweep": {"eta": [4.0, 0.0]}}}, r"evaluate\.sweep\.eta\.1: Input should be greater than 0"),
    ("steps = 0", {"steer": {"steps": 0}}, r"steer\.steps: Input should be greater than or equal to 1"),
    ("sweep steps = 0", {"evaluate": {"sweep": {"steps": [0]}}}, r"evaluate\.sweep\.steps\.0: .*greater than or equal to 1"),
    ("negative layer", {"steer": {"layers": [-1]}}, r"steer\.layers\.0: Input should be greater than or equal to 0"),
    ("top-k = 0", {"select": {"k": 0}}, r"select\.k: Input should be greater than or equal to 1"),
    ("batch size 0", {"generate": {"batch_size": 0}}, r"generate\.batch_size: Input should be greater than or equal to 1"),
    ("unknown dataset", {"data": {"train": [{"name": "no_such_set"}]}}, r"data\.train\.0\.name: .*unknown dataset 'no_such_set'"),
    ("unknown task", {"evaluate": {"tasks": [{"name": "no_such_task"}]}}, r"evaluate\.tasks\.0\.name: .*unknown task"),
    ("unknown profile", {"profile": "nightly"}, r"profile: unknown profile 'nightly'"),
    ("val fraction 1", {"splits": {"val_fraction": 1.0}}, r"splits\.val_fraction: Input should be less than 1"),
]
for _name, _override, _match in PARAMS_CASES:
    CASES.append(Case("params", _name, f"`{_inline(_override)}`", "ConfigError naming the key, before any model loads",
                      partial(_parse_with, _override), ConfigError, _match))


@case("params", "params not a mapping", "a params.yaml holding a YAML list", "ConfigError", ConfigError,
      r"params must be a mapping, got list")
def _not_mapping(ctx: Ctx) -> None:
    (ctx.tmp / "params.yaml").write_text("- a\n- b\n", encoding="utf-8")
    load(ctx.tmp / "params.yaml")


@case("params", "not valid YAML", "`generate: [batch_size: 8` (unclosed bracket)", "ConfigError naming the file",
      ConfigError, r"params\.yaml: not valid YAML \(line 2, column 1\): expected ',' or '\]'")
def _not_yaml(ctx: Ctx) -> None:
    (ctx.tmp / "params.yaml").write_text("generate: [batch_size: 8\n", encoding="utf-8")
    load(ctx.tmp / "params.yaml")


@case("params", "local model path missing", "`model.id: ./no-such-model-folder`", "ConfigError naming `model.id`",
      ConfigError, r"model\.id: path does not exist: \./no-such-model-folder")
def _model_path(ctx: Ctx) -> None:
    parse(deep_merge(_repo_params(), {"model": {"id": "./no-such-model-folder", "adapter": None}}))


class CliFailed(RuntimeError):
    """A ``python -m pipelines`` run that exited non-zero (its exit code and stderr)."""


@case("params", "invalid params through the CLI", "`python -m pipelines generate` with `generate.batch_size: 0`",
      "exit code 2, `error: invalid params` naming the key, no output folder", CliFailed,
      r"exit 2: error: invalid params / .*generate\.batch_size")
def _cli(ctx: Ctx) -> None:
    project = write_project(ctx.tmp / "project", ctx.tiny, {"generate": {"batch_size": 0}})
    with nothing_left(project, "data/responses"):
        proc = subprocess.run([str(BIN / "python"), "-m", "pipelines", "generate"], cwd=project, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CliFailed(f"exit {proc.returncode}: {proc.stderr.strip()}")


# ------------------------------------------------------------------------------ datasets (local copies under data.root)


def _load_file(relpath: str, dataset: str, content: bytes | None, ctx: Ctx) -> None:
    from eds.datasets import load as load_dataset

    root = ctx.tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    if content is not None:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(content)
    load_dataset(dataset, root=root)


def _jsonl(*prompts: object) -> bytes:
    return "".join(json.dumps({"instruction": p, "input": ""}) + "\n" for p in prompts).encode("utf-8")


ADV, ALPACA = "advbench/harmful_behaviors.csv", "alpaca/train.jsonl"
DATASET_CASES = [  # (bad input, what the file holds, file, dataset, bytes (None: no file), expected message)
    ("missing dataset file", "no file under data.root", ADV, "advbench", None, r"local benchmark file not found: .*harmful_behaviors\.csv"),
    ("empty dataset file", "a 0-byte CSV", ADV, "advbench", b"", r"advbench: the train split is empty"),
    ("dataset with a header only", "`goal,target` and no row", ADV, "advbench", b"goal,target\n", r"the train split is empty"),
    ("prompt column missing", "a CSV with `behavior,target` (the prompt column is `goal`)", ADV, "advbench",
     b"behavior,target\nDo a thing,Sure\n", r"advbench: column 'goal' missing; columns: behavior, target"),
    ("empty prompt", 'a JSONL row with `"instruction": ""`', ALPACA, "alpaca", _jsonl("Say hi.", ""),
     r"item alpaca:00001: empty prompt in column 'instruction'"),
    ("whitespace-only prompt", "a prompt of spaces, a tab and a newline", ALPACA, "alpaca", _jsonl("  \t\n "),
     r"item alpaca:00000: empty prompt"),
    ("prompt of control characters only", "`\\u0000\\u0007\\u001b\\b\\u200b`", ALPACA, "alpaca", _jsonl("\x00\x07\x1b\x08\u200b"),
     r"empty prompt in column 'instruction' \(no printable character"),
    ("null prompt", '`"instruction": null`', ALPACA, "alpaca", _jsonl(None), r"item alpaca:00000: column 'instruction' is null"),
    ("CSV not UTF-8", "Latin-1 bytes (`Caf\\xe9`)", ADV, "advbench", b"goal,target\nCaf\xe9 au lait,Sure\n",
     r"harmful_behaviors\.csv: not valid UTF-8 \(byte 15: invalid continuation byte\)"),
    ("JSONL not UTF-8", "Latin-1 bytes in a JSON line", ALPACA, "alpaca", b'{"instruction": "Caf\xe9", "input": ""}\n',
     r"train\.jsonl: not valid UTF-8"),
    ("lone surrogate", 'a JSON escape `"\\ud800"` (decodes to text that is not UTF-8)', ALPACA, "alpaca",
     b'{"instruction": "Hi \\ud800 there", "input": ""}\n', r"column 'instruction' is not valid UTF-8 text \(surrogates not allowed"),
    ("malformed JSON line", "line 2 cut short", ALPACA, "alpaca", b'{"instruction": "ok", "input": ""}\n{"instruction": \n',
     r"train\.jsonl: line 2 is not valid JSON"),
]
for _name, _tried, _rel, _dataset, _content, _match in DATASET_CASES:
    CASES.append(Case("datasets", _name, _tried, "DatasetUnavailable naming the file or item",
                      partial(_load_file, _rel, _dataset, _content), DatasetUnavailable, _match))


@case("datasets", "training dataset missing (split stage)", "`data.train: [advbench]` with an empty data.root",
      "DatasetUnavailable naming the file; no split artifact", DatasetUnavailable, r"local benchmark file not found")
def _split_missing(ctx: Ctx) -> None:
    (ctx.tmp / "empty-root").mkdir()
    project = write_project(ctx.tmp / "project", ctx.tiny, {"data": {"root": str(ctx.tmp / "empty-root"),
                                                                    "train": [{"name": "advbench"}]}})
    with nothing_left(project, "data/splits"):
        run_stage_in(project, "split")


# ------------------------------------------------------------------------------ prompts (documented behaviour)

_LOADED: dict[str, Any] = {}


def _tiny(ctx: Ctx) -> Any:
    from eds.config import ModelConfig
    from eds.models import load_model

    if "tiny" not in _LOADED:
        _LOADED["tiny"] = load_model(ModelConfig(id=str(ctx.tiny), device="cpu"))
    return _LOADED["tiny"]


@case("prompts", "huge prompt", "a 40,000-word prompt, `max_prompt_tokens: 64`, through generation and extraction",
      "truncated to its first 64 tokens (the chat template is added after, whole) and marked `truncated`; "
      "generation and extraction see the same tokens", None, r"truncated=True, prompt tokens 64 \+ chat template")
def _huge(ctx: Ctx) -> str:
    from eds.activations import prepare_prompts
    from eds.generation import Decoding, generate

    loaded, huge = _tiny(ctx), "word " * 40_000
    out = generate(loaded, [huge], Decoding(max_new_tokens=2, max_prompt_tokens=64, batch_size=1))[0]
    prepared = prepare_prompts(loaded, [huge], 64)[0]
    template = len(loaded.tokenizer(loaded.chat(""), add_special_tokens=False)["input_ids"])
    assert prepared.truncated and prepared.n_tokens == out.n_prompt_tokens <= 64 + template + 1
    return f"truncated={out.truncated}, prompt tokens 64 + chat template = {out.n_prompt_tokens}"


@case("prompts", "control characters inside a prompt", "`Tell me\\u0007 a joke\\u001b[0m about cats` in a JSONL file",
      "kept verbatim (real benchmarks have some: 57 MMLU questions); generation runs", None, r"kept verbatim")
def _control_mixed(ctx: Ctx) -> str:
    from eds.datasets import load as load_dataset
    from eds.generation import Decoding, generate

    text = "Tell me\x07 a joke\x1b[0m about cats"
    (ctx.tmp / "root/alpaca").mkdir(parents=True)
    (ctx.tmp / "root" / ALPACA).write_bytes(_jsonl(text))
    item = load_dataset("alpaca", root=ctx.tmp / "root")[0]
    out = generate(_tiny(ctx), [item.prompt], Decoding(max_new_tokens=2, max_prompt_tokens=64, batch_size=1))[0]
    assert item.prompt == text and out.n_new_tokens >= 1
    return f"kept verbatim ({len(item.prompt)} characters); {out.n_new_tokens} tokens generated"


# ------------------------------------------------------------------------------ the harness and the table

_OBSERVED: dict[str, str] = {}


def _slug(c: Case) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{c.area} {c.name}".lower()).strip("-")


def _shown(text: str, ctx: Ctx) -> str:
    for path, label in ((ctx.tmp, "<tmp>"), (ctx.tiny, "<tiny-model>"), (REPO, "<repo>")):
        text = text.replace(str(path), label)
    text = " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def observe(c: Case, factory: pytest.TempPathFactory, tiny: Path) -> str:
    """Run a case once (memoised): check the error type and message (or outcome); return what was seen."""
    if c.name not in _OBSERVED:
        ctx = Ctx(factory.mktemp(_slug(c)[:40]), tiny)
        if c.raises is None:
            outcome = str(c.run(ctx))
            assert re.search(c.match, outcome), f"{c.name}: outcome {outcome!r} does not match {c.match!r}"
            _OBSERVED[c.name] = "ok: " + _shown(outcome, ctx)
        else:
            with pytest.raises(c.raises) as info:
                c.run(ctx)
            message = _shown(str(info.value), ctx)
            assert re.search(c.match, message), f"{c.name}: message {message!r} does not match {c.match!r}"
            _OBSERVED[c.name] = f"{type(info.value).__name__}: {message}"
    return _OBSERVED[c.name]


@pytest.fixture(autouse=True)
def _no_data_root_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case names its own data root; ``$EDS_DATA_ROOT`` (set by ``make test``) would override it."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def test_case_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40


@pytest.mark.parametrize("bad", CASES, ids=_slug)
def test_bad_input(bad: Case, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> None:
    observe(bad, tmp_path_factory, tiny_model_dir)


def render(observed: dict[str, str]) -> str:
    def cell(text: str, code: bool = False) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return "`" + text.replace("`", "'") + "`" if code else text

    lines = [
        "# Bad inputs and what they do",
        "",
        "<!-- Generated by tests/test_bad_inputs.py; do not edit by hand. Regenerate with:",
        "     EDS_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py -->",
        "",
        "Every row is a case the test suite runs against the real code path (params parsing, dataset",
        "loading, the stages, activation-store reads, EBM loading, training). The *observed* column is",
        "the error type and message the code raised (paths shortened to `<tmp>`, long messages cut), or",
        "`ok:` and the outcome for documented behaviour. Where a stage fails, the test also checks that it",
        "left no partial artifact behind.",
        "",
        "**Truncation policy.** A prompt longer than `generate.max_prompt_tokens` (`evaluate.max_prompt_tokens`",
        "in the evaluation) keeps its first N tokens and is marked `truncated`; the chat template is applied",
        "after truncation, so it stays whole. Generation and activation extraction truncate identically.",
        "",
        "**Prompt text policy.** A null prompt, or one without a printable character (empty, whitespace,",
        "control characters only), is an error naming the item, as is text that is not valid UTF-8. Control",
        "characters inside otherwise printable text are kept verbatim.",
    ]
    for area in sorted(dict.fromkeys(c.area for c in CASES), key=lambda a: (AREAS + [a]).index(a)):
        lines += ["", f"## {area[0].upper()}{area[1:]}", "", "| bad input | what is tried | expected | observed |", "|---|---|---|---|"]
        lines += [f"| {cell(c.name)} | {cell(c.tried)} | {cell(c.expected)} | {cell(observed[c.name], code=True)} |"
                  for c in CASES if c.area == area]
    return "\n".join(lines) + "\n"


def test_docs_table_is_current(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> None:
    table = render({c.name: observe(c, tmp_path_factory, tiny_model_dir) for c in CASES})
    if os.environ.get(WRITE_ENV) == "1":
        DOC.write_text(table, encoding="utf-8")
        return
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert current == table, (
        f"{DOC.relative_to(REPO)} is out of date with the bad-input cases; regenerate it with:\n"
        f"  {WRITE_ENV}=1 python -m pytest tests/test_bad_inputs.py"
    )
