"""A registry of declarative evaluation tasks, and how each one gets its items.

A task is a benchmark (a dataset of :mod:`eds.datasets`), the subset evaluated, and what is
measured on it (lm-evaluation-harness's idea: the task definition is data, the runner is shared):

* ``compliance`` -- benign prompts; 1 - refusal rate (higher = less over-refusal);
* ``refusal`` -- harmful prompts; refusal rate (higher = safer; 1 - attack success);
* ``multiple_choice`` -- log-likelihood accuracy in an lm-eval format (``mmlu`` or ``arc``);
* ``math`` -- generation, final answer extracted (``gsm8k``: last number; ``boxed``: last
  ``\\boxed{}``) and compared after normalisation.

**Leak check.** No evaluation prompt may be one the EBMs were trained on (the ``train`` and
``val`` rows of ``data/splits/splits.parquet``, compared by :func:`eds.datasets.text_key`) or one
the testbed model was tuned on (``splits.exclude`` files). A task whose dataset is in the
training pool by design (OR-Bench-Hard's held-out half, AdvBench) drops those prompts
(``drop_training``) and reports how many; any other task fails with
:class:`eds.splits.SplitLeakError`.

**Availability.** A task whose data cannot be read (the full MATH set offline, CARES without the
hub) is returned as unavailable with the reason, and reported as "not available".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eds.datasets import DatasetUnavailable, Item, PromptItem, load, sample, text_key
from eds.splits import SplitLeakError, SplitRow

TaskKind = Literal["compliance", "refusal", "multiple_choice", "math"]
METRIC_OF: dict[str, str] = {"compliance": "compliance", "refusal": "refusal", "multiple_choice": "accuracy", "math": "accuracy"}
GENERATION_KINDS = ("compliance", "refusal", "math")

GSM8K_INSTRUCTION = "Solve this math problem step by step, then give the final answer as a number.\n\n{question}"
BOXED_INSTRUCTION = "Solve this math problem. Put the final answer within \\boxed{{}}.\n\n{question}"


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task (see the module docstring)."""

    name: str
    dataset: str
    kind: TaskKind
    description: str
    prompt_type: Literal["benign", "harmful"] | None = None  # keep only these prompts
    split: str | None = None  # the dataset's split (None: its default)
    from_splits: bool = False  # items are the dataset's ``eval`` rows of the split artifact
    drop_training: bool = False  # drop training prompts (else a leak fails the stage)
    mc_format: Literal["mmlu", "arc"] | None = None
    answer_format: Literal["gsm8k", "boxed"] | None = None
    category: str = "category"  # what the category column means, for reports

    @property
    def metric(self) -> str:
        return METRIC_OF[self.kind]

    @property
    def generates(self) -> bool:
        return self.kind in GENERATION_KINDS

    @property
    def is_prompt_task(self) -> bool:
        return self.kind in ("compliance", "refusal")

    def math_prompt(self, question: str) -> str:
        template = BOXED_INSTRUCTION if self.answer_format == "boxed" else GSM8K_INSTRUCTION
        return template.format(question=question.strip())


def _registry() -> dict[str, EvalTask]:
    tasks = [
        EvalTask("orb_h", "orb_h", "compliance", "OR-Bench-Hard-1K (held-out half): over-refusal", from_splits=True,
                 drop_training=True),
        EvalTask("xstest_safe", "xstest", "compliance", "XSTest safe prompts", prompt_type="benign", category="type"),
        EvalTask("xstest_unsafe", "xstest", "refusal", "XSTest unsafe prompts", prompt_type="harmful", category="type"),
        EvalTask("jbb_harmful", "jbb_harmful", "refusal", "JailbreakBench harmful behaviours (1 - attack success)"),
        EvalTask("jbb_benign", "jbb_benign", "compliance", "JailbreakBench benign behaviours"),
        EvalTask("harmbench", "harmbench", "refusal", "HarmBench standard behaviours", category="semantic category"),
        EvalTask("advbench", "advbench", "refusal", "AdvBench (rows not used for training)", drop_training=True),
        EvalTask("mmlu", "mmlu", "multiple_choice", "MMLU (lm-eval mmlu format, acc)", mc_format="mmlu", category="subject"),
        EvalTask("arc_challenge", "arc_challenge", "multiple_choice", "ARC-Challenge (lm-eval arc format, acc)",
                 mc_format="arc"),
        EvalTask("gsm8k", "gsm8k", "math", "GSM8K test (last number)", answer_format="gsm8k"),
        EvalTask("math500", "math500", "math", "MATH-500 (last \\boxed{})", answer_format="boxed", category="subject"),
        EvalTask("math", "math", "math", "MATH, full 5,000-problem test set (hub only)", answer_format="boxed",
                 category="subject"),
        EvalTask("demo_benign", "demo_eval", "compliance", "Demo suite: benign prompts", prompt_type="benign"),
        EvalTask("demo_harmful", "demo_eval", "refusal", "Demo suite: harmful prompts", prompt_type="harmful"),
        EvalTask("demo_mc", "demo_mc", "multiple_choice", "Demo suite: multiple choice (mmlu format)",
                 mc_format="mmlu", category="subject"),
        EvalTask("demo_math", "demo_math", "math", "Demo suite: arithmetic word problems (last number)",
                 answer_format="gsm8k", category="subject"),
    ]
    return {task.name: task for task in tasks}


TASKS: dict[str, EvalTask] = _registry()


@dataclass
class TaskItems:
    """The items of one task, or why there are none."""

    task: EvalTask
    items: list[Item] = field(default_factory=list)
    dropped_training: int = 0
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None


def item_text(item: Item) -> str:
    """The text that identifies an item for the leak check (prompt or question)."""
    return item.prompt if isinstance(item, PromptItem) else item.question


def category_of(item: Item) -> str | None:
    return item.category if isinstance(item, PromptItem) else item.subject


def load_task(
    task: EvalTask,
    *,
    limit: int | None = None,
    split: str | None = None,
    drop_training: bool | None = None,
    source: str = "local",
    root: str | Path | None = None,
    seed: int = 0,
    split_rows: Sequence[SplitRow] = (),
    training_keys: set[str] | frozenset[str] = frozenset(),
) -> TaskItems:
    """The task's items: its eval split rows or the dataset (filtered to the prompt type), minus
    training prompts when the task drops them, then a seeded sample of ``limit``.

    Raises :class:`SplitLeakError` when a task that may not drop training prompts has some.
    """
    drop = task.drop_training if drop_training is None else drop_training
    try:
        if task.from_splits and any(row.dataset == task.dataset for row in split_rows):
            items: list[Item] = [row.to_item() for row in split_rows if row.dataset == task.dataset and row.split == "eval"]
            if not items:
                raise DatasetUnavailable(
                    f"{task.dataset} is in the training pool with no eval rows: give it a train_fraction < 1 in data.train"
                )
        else:
            items = list(load(task.dataset, split=split or task.split, source=source, root=root))
    except DatasetUnavailable as err:
        return TaskItems(task, unavailable=str(err))
    if task.prompt_type is not None:
        items = [i for i in items if isinstance(i, PromptItem) and i.prompt_type == task.prompt_type]
    leaked = [i for i in items if text_key(item_text(i)) in training_keys]
    if leaked and not drop:
        shown = ", ".join(i.item_id for i in leaked[:5])
        raise SplitLeakError(
            f"task {task.name}: {len(leaked)} evaluation prompt(s) also appear in a training split or the testbed's "
            f"training prompts: {shown}{' ...' if len(leaked) > 5 else ''}. Remove them from training, or set "
            f"drop_training: true for this task in evaluate.tasks to evaluate on the rest."
        )
    kept = [i for i in items if text_key(item_text(i)) not in training_keys]
    if not kept:
        return TaskItems(task, dropped_training=len(leaked), unavailable=f"{task.name}: no items left after dropping training prompts")
    return TaskItems(task, sample(kept, limit, seed, task.name), dropped_training=len(leaked))


def assert_disjoint(tasks: Mapping[str, TaskItems], training_keys: set[str] | frozenset[str]) -> None:
    """Final guard: no evaluation item of any task is a training prompt (raises SplitLeakError)."""
    for name, loaded in tasks.items():
        bad = [i.item_id for i in loaded.items if text_key(item_text(i)) in training_keys]
        if bad:
            raise SplitLeakError(f"task {name}: evaluation items {bad[:5]} are training prompts")


__all__ = [
    "EvalTask",
    "GENERATION_KINDS",
    "METRIC_OF",
    "TASKS",
    "TaskItems",
    "TaskKind",
    "assert_disjoint",
    "category_of",
    "item_text",
    "load_task",
]
