"""A registry of declarative benchmark definitions and one loader for all of them.

Each :class:`BenchmarkSpec` says where a benchmark lives on the hub (id, configs, split) and
in a local root holding the same files (``../shared/benchmarks`` here), and what its columns
mean. :func:`load` turns either source into typed records:

- :class:`PromptItem` for refusal benchmarks (prompt, benign/harmful, category),
- :class:`ChoiceItem` for multiple choice (question, choices, answer index),
- :class:`MathItem` for problems with a final answer.

A ``limit`` draws a seeded sample (same seed, same rows, in file order).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from eds.answers import gsm8k_final_answer, last_boxed

Kind = Literal["prompts", "multiple_choice", "math"]
Row = Mapping[str, Any]
DEMO_DIR = Path(__file__).with_name("demo")


class DatasetUnavailable(RuntimeError):
    """The benchmark cannot be read from the configured source (offline, or no local copy)."""


@dataclass(frozen=True)
class PromptItem:
    item_id: str
    dataset: str
    prompt: str
    prompt_type: Literal["benign", "harmful"]
    category: str | None = None


@dataclass(frozen=True)
class ChoiceItem:
    item_id: str
    dataset: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None


@dataclass(frozen=True)
class MathItem:
    item_id: str
    dataset: str
    question: str
    answer: str
    subject: str | None = None


Item = Union[PromptItem, ChoiceItem, MathItem]


@dataclass(frozen=True)
class Columns:
    """What each column means, for one source (hub or local) of a benchmark."""

    text: str = "prompt"
    category: str | None = None
    label: str | None = None  # column whose values map to benign/harmful via BenchmarkSpec.labels
    choices: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class Split:
    hub_split: str | None
    local_file: str | None
    rows: int | None = None  # expected rows in the local copy (after row_filter)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    kind: Kind
    description: str
    hub_id: str | None
    splits: Mapping[str, Split]
    default_split: str
    columns: Columns
    local_columns: Columns | None = None
    hub_configs: tuple[str | None, ...] = (None,)
    prompt_type: Literal["benign", "harmful"] | None = None
    labels: Mapping[Any, Literal["benign", "harmful"]] = field(default_factory=dict)
    row_filter: Callable[[Row], bool] | None = None
    hub_answer: Callable[[Row], str] | None = None  # derive a math answer from a hub row
    packaged: bool = False  # files ship inside eds/demo, no data root needed

    @property
    def needs_root(self) -> bool:
        return not self.packaged

    def cols(self, source: str) -> Columns:
        return self.local_columns if (source == "local" and self.local_columns) else self.columns


def _standard_only(row: Row) -> bool:
    """Local copies keep HarmBench's FunctionalCategory; the hub's 'standard' config is pre-filtered."""
    return str(row.get("FunctionalCategory", "standard")) == "standard"


def _no_input(row: Row) -> bool:
    return not str(row.get("input") or "").strip()


def _cares_binary(row: Row) -> bool:
    return int(row["harmful_level"]) in (0, 2)


_MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _registry() -> dict[str, BenchmarkSpec]:
    specs = [
        BenchmarkSpec(
            "orb_h", "prompts", "OR-Bench-Hard-1K: benign prompts that look harmful (over-refusal)",
            "bench-llm/or-bench", {"train": Split("train", "or-bench-hard-1k/or-bench-hard-1k.csv", 1319)},
            "train", Columns("prompt", category="category"), hub_configs=("or-bench-hard-1k",),
            prompt_type="benign",
        ),
        BenchmarkSpec(
            "orb_toxic", "prompts", "OR-Bench toxic prompts (local copy: the EDS authors' 2,303 selection)",
            "bench-llm/or-bench",
            {"train": Split("train", "or-bench-toxic-harmful/or-bench-toxic-harmful.jsonl", 2303)},
            "train", Columns("prompt", category="category"), local_columns=Columns("prompt"),
            hub_configs=("or-bench-toxic",), prompt_type="harmful",
        ),
        BenchmarkSpec(
            "xstest", "prompts", "XSTest: 250 safe prompts that sound unsafe, 200 unsafe contrasts",
            "walledai/XSTest", {"test": Split("test", "xstest/xstest_prompts.csv", 450)}, "test",
            Columns("prompt", category="type", label="label"), labels={"safe": "benign", "unsafe": "harmful"},
        ),
        BenchmarkSpec(
            "jbb_harmful", "prompts", "JailbreakBench JBB-Behaviors, harmful behaviors",
            "JailbreakBench/JBB-Behaviors", {"harmful": Split("harmful", "jbb-behaviors/harmful.csv", 100)},
            "harmful", Columns("Goal", category="Category"), hub_configs=("behaviors",), prompt_type="harmful",
        ),
        BenchmarkSpec(
            "jbb_benign", "prompts", "JailbreakBench JBB-Behaviors, benign twins of the harmful behaviors",
            "JailbreakBench/JBB-Behaviors", {"benign": Split("benign", "jbb-behaviors/benign.csv", 100)},
            "benign", Columns("Goal", category="Category"), hub_configs=("behaviors",), prompt_type="benign",
        ),
        BenchmarkSpec(
            "harmbench", "prompts", "HarmBench standard text behaviors (no copyright/contextual rows)",
            "walledai/HarmBench",
            {
                "test": Split("train", "harmbench/harmbench_behaviors_text_test.csv", 159),
                "val": Split(None, "harmbench/harmbench_behaviors_text_val.csv", 41),
            },
            "test", Columns("prompt", category="category"),
            local_columns=Columns("Behavior", category="SemanticCategory"),
            hub_configs=("standard",), prompt_type="harmful", row_filter=_standard_only,
        ),
        BenchmarkSpec(
            "advbench", "prompts", "AdvBench harmful behaviors", "walledai/AdvBench",
            {"train": Split("train", "advbench/harmful_behaviors.csv", 520)}, "train",
            Columns("prompt"), local_columns=Columns("goal"), prompt_type="harmful",
        ),
        BenchmarkSpec(
            "alpaca", "prompts", "Alpaca instructions without input (plain benign requests)", "tatsu-lab/alpaca",
            {"train": Split("train", "alpaca/train.jsonl", 31323)}, "train", Columns("instruction"),
            prompt_type="benign", row_filter=_no_input,
        ),
        BenchmarkSpec(
            "cares", "prompts", "CARES-18K (the paper's EBM training data): harmful_level 0 vs 2",
            "HFXM/CARES-18K", {"train": Split("train", None), "test": Split("test", None)}, "train",
            Columns("prompt", category="principle_index", label="harmful_level"),
            labels={0: "benign", 2: "harmful"}, row_filter=_cares_binary,
        ),
        BenchmarkSpec(
            "mmlu", "multiple_choice", "MMLU, 57 subjects", "cais/mmlu",
            {"test": Split("test", "mmlu/test.parquet", 14042), "dev": Split("dev", "mmlu/dev.parquet", 285)},
            "test", Columns("question", category="subject", choices="choices", answer="answer"),
            hub_configs=("all",),
        ),
        BenchmarkSpec(
            "arc_challenge", "multiple_choice", "ARC-Challenge", "allenai/ai2_arc",
            {"test": Split("test", "arc-challenge/test.parquet", 1172)}, "test",
            Columns("question", choices="choices", answer="answerKey"), hub_configs=("ARC-Challenge",),
        ),
        BenchmarkSpec(
            "math500", "math", "MATH-500 (the PRM800K test subset of MATH)", "HuggingFaceH4/MATH-500",
            {"test": Split("test", "math-500/test.jsonl", 500)}, "test",
            Columns("problem", category="subject", answer="answer"),
        ),
        BenchmarkSpec(
            "math", "math", "MATH, the full 5,000-problem Hendrycks test set (hub only)",
            "EleutherAI/hendrycks_math", {"test": Split("test", None)}, "test",
            Columns("problem", category="type", answer="solution"), hub_configs=_MATH_SUBJECTS,
            hub_answer=lambda row: last_boxed(str(row["solution"])) or "",
        ),
        BenchmarkSpec(
            "gsm8k", "math", "GSM8K grade-school math", "openai/gsm8k",
            {"test": Split("test", "gsm8k/test.jsonl", 1319), "train": Split("train", "gsm8k/train.jsonl", 7473)},
            "test", Columns("question", answer="answer"), hub_configs=("main",),
            hub_answer=lambda row: gsm8k_final_answer(str(row["answer"])),
        ),
    ]
    specs += [
        BenchmarkSpec(
            f"demo_{split}", kind, f"Our own demo suite ({split}), shipped in eds/demo", None,
            {split: Split(None, f"{split}.jsonl")}, split, cols, packaged=True,
            labels={"benign": "benign", "harmful": "harmful"} if kind == "prompts" else {},
        )
        for split, kind, cols in (
            ("train", "prompts", Columns("prompt", category="category", label="prompt_type")),
            ("eval", "prompts", Columns("prompt", category="category", label="prompt_type")),
            ("mc", "multiple_choice", Columns("question", category="subject", choices="choices", answer="answer")),
            ("math", "math", Columns("question", category="subject", answer="answer")),
        )
    ]
    return {spec.name: spec for spec in specs}


REGISTRY: dict[str, BenchmarkSpec] = _registry()


def read_local(path: Path) -> list[dict[str, Any]]:
    """Rows of a local CSV, JSON Lines or parquet file, with the columns as stored."""
    if not path.is_file():
        raise DatasetUnavailable(f"local benchmark file not found: {path}")
    if path.suffix in (".jsonl", ".csv"):
        try:
            text = path.read_bytes().decode("utf-8-sig")  # a leading byte-order mark is dropped
        except UnicodeDecodeError as err:
            raise DatasetUnavailable(
                f"{path}: not valid UTF-8 (byte {err.start}: {err.reason}); re-save the file as UTF-8"
            ) from None
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise DatasetUnavailable(f"{path}: line {number} is not valid JSON: {err}") from None
            if not isinstance(rows[-1], dict):
                raise DatasetUnavailable(f"{path}: line {number} is not a JSON object")
        return rows
    if path.suffix == ".csv":
        import io

        import pandas as pd

        try:
            frame = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
        except pd.errors.EmptyDataError:  # a 0-byte file: no header, no rows
            return []
        except pd.errors.ParserError as err:
            raise DatasetUnavailable(f"{path}: malformed CSV: {err}") from None
        return frame.to_dict("records")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except pa.ArrowInvalid as err:  # empty or corrupt file
            raise DatasetUnavailable(f"unreadable parquet file {path}: {err}") from None
    raise DatasetUnavailable(f"unsupported local file type: {path}")


def read_hub(spec: BenchmarkSpec, split: Split, revision: str | None = None) -> list[dict[str, Any]]:
    """Rows from the Hugging Face hub (all configured configs, concatenated)."""
    if spec.hub_id is None or split.hub_split is None:
        raise DatasetUnavailable(f"{spec.name}: not published on the hub for this split")
    from datasets import load_dataset

    rows: list[dict[str, Any]] = []
    for config in spec.hub_configs:
        try:
            data = load_dataset(spec.hub_id, config, split=split.hub_split, revision=revision)
        except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
            raise DatasetUnavailable(
                f"{spec.name}: cannot load {spec.hub_id} [{config}] / {split.hub_split} from the hub "
                f"(offline? HF_DATASETS_OFFLINE=1 allows only cached datasets): {err}"
            ) from None
        rows.extend(data.to_list())
    return rows


def raw_rows(spec: BenchmarkSpec, split_name: str, source: str, root: Path | None) -> list[dict[str, Any]]:
    split = spec.splits.get(split_name)
    if split is None:
        raise DatasetUnavailable(f"{spec.name}: no split {split_name!r}; splits: {', '.join(spec.splits)}")
    if spec.packaged:
        return read_local(DEMO_DIR / str(split.local_file))
    if source == "hub":
        return read_hub(spec, split)
    if split.local_file is None:
        raise DatasetUnavailable(f"{spec.name}: no local copy exists; it loads only from the hub ({spec.hub_id})")
    if root is None:
        raise DatasetUnavailable(f"{spec.name}: a local data root is required")
    return read_local(Path(root) / split.local_file)


def _require(row: Row, column: str, spec: BenchmarkSpec) -> Any:
    if column not in row:
        raise DatasetUnavailable(f"{spec.name}: column {column!r} missing; columns: {', '.join(map(str, row))}")
    return row[column]


def _prompt_type(row: Row, spec: BenchmarkSpec, cols: Columns) -> Literal["benign", "harmful"] | None:
    if cols.label is None:
        return spec.prompt_type
    value = _require(row, cols.label, spec)
    key = int(value) if isinstance(value, str) and value.isdigit() else value
    return spec.labels.get(key)


def _choices(row: Row, spec: BenchmarkSpec, cols: Columns) -> tuple[tuple[str, ...], int]:
    raw = _require(row, str(cols.choices), spec)
    answer = _require(row, str(cols.answer), spec)
    if isinstance(raw, Mapping):  # ARC: {"text": [...], "label": ["A", ...]}
        texts, labels = list(raw["text"]), [str(x) for x in raw["label"]]
        return tuple(map(str, texts)), labels.index(str(answer))
    if isinstance(answer, str) and not answer.isdigit():
        return tuple(map(str, raw)), "ABCDEFGHIJ".index(answer.strip().upper())
    return tuple(map(str, raw)), int(answer)


def check_text(value: Any, item_id: str, column: str) -> str:
    """The prompt/question text of a row, or :class:`DatasetUnavailable` naming the item.

    Policy: a missing (null) text, or one with no printable character (empty, whitespace or only
    control characters), is an error, as is text that cannot be encoded as UTF-8 (a lone surrogate
    from a JSON ``\\ud800`` escape). Control characters inside otherwise printable text are kept
    verbatim (57 MMLU questions have some); over-long text is truncated later, at tokenisation
    (``generate.max_prompt_tokens``, see :mod:`eds.generation`).
    """
    if value is None:
        raise DatasetUnavailable(f"item {item_id}: column {column!r} is null (no prompt text)")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DatasetUnavailable(
            f"item {item_id}: column {column!r} is not valid UTF-8 text ({err.reason} at character {err.start})"
        ) from None
    if not any(unicodedata.category(char)[0] not in "CZ" for char in text):
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        raise DatasetUnavailable(f"item {item_id}: empty prompt in column {column!r} (no printable character: {shown})")
    return text


def to_item(row: Row, index: int, spec: BenchmarkSpec, source: str) -> Item | None:
    """Map one raw row to a typed item (None when the row is not part of this benchmark)."""
    cols = spec.cols(source)
    item_id = f"{spec.name}:{index:05d}"
    raw_text = _require(row, cols.text, spec)
    category = None if cols.category is None else row.get(cols.category)
    category = None if category in (None, "") else str(category)
    if spec.kind == "prompts":
        prompt_type = _prompt_type(row, spec, cols)
        if prompt_type is None:  # e.g. a CARES row of harmful_level 1: not part of this benchmark
            return None
        return PromptItem(item_id, spec.name, check_text(raw_text, item_id, cols.text), prompt_type, category)
    text = check_text(raw_text, item_id, cols.text)
    if spec.kind == "multiple_choice":
        choices, answer = _choices(row, spec, cols)
        return ChoiceItem(item_id, spec.name, text, choices, answer, category)
    if source == "hub" and spec.hub_answer is not None:
        answer = spec.hub_answer(row)
    else:
        raw_answer = str(_require(row, str(cols.answer), spec))
        answer = gsm8k_final_answer(raw_answer) if "####" in raw_answer else raw_answer
    return MathItem(item_id, spec.name, text, answer, category)


_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Text for overlap checks: NFKC, lowercase, punctuation dropped, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", folded)).strip()


def text_key(text: str) -> str:
    """sha256 of :func:`normalize_text`: the identity used to keep train and eval apart."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def sample(items: Sequence[Item], limit: int | None, seed: int, name: str) -> list[Item]:
    """At most ``limit`` items, drawn with a seed of their own per dataset, kept in file order."""
    if limit is None or limit >= len(items):
        return list(items)
    rng = random.Random(f"{seed}:{name}")
    keep = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in keep]


def load(
    name: str,
    *,
    split: str | None = None,
    source: str = "local",
    root: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Load a registered benchmark as typed items (see the module docstring)."""
    if name not in REGISTRY:
        raise DatasetUnavailable(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    split_name = split or spec.default_split
    rows = raw_rows(spec, split_name, source, None if root is None else Path(root))
    if not rows:
        raise DatasetUnavailable(f"{name}: the {split_name} split is empty")
    kept = [row for row in rows if spec.row_filter is None or spec.row_filter(row)]
    items = [item for i, row in enumerate(kept) if (item := to_item(row, i, spec, source)) is not None]
    if not items:
        raise DatasetUnavailable(f"{name}: no usable rows in the {split_name} split")
    return sample(items, limit, seed, name)
