"""Agreement of eds.multiple_choice with lm-evaluation-harness itself, on a sample of MMLU and ARC-Challenge.

lm-eval is not a project dependency (it pulls ~20 packages for tasks we do not run): ``make
benchmark-lm-eval`` installs it in a side venv that also sees the project's venv and runs this
script there. By hand::

    python3 -m venv /tmp/lmeval-venv
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \\
        > "$(/tmp/lmeval-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/eds.pth"
    /tmp/lmeval-venv/bin/pip install lm-eval==0.4.13
    PYTHONPATH=. /tmp/lmeval-venv/bin/python benchmarks/lm_eval_agreement.py --n 100

It writes seeded samples of the local copies to a temporary folder, runs lm-eval's ``hf`` model
(``HFLM`` around the embedded model's weights, as the project loads them) on them with task YAMLs that copy lm-eval's ``mmlu`` and ``arc_challenge`` definitions but read the
local parquet files (fully offline), runs :func:`eds.multiple_choice.choice_logliks` (unsteered)
on the same rows, and prints/writes the per-choice log-likelihood differences and the agreement of
predictions and accuracies (``reports/benchmarks/lm_eval_agreement.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MMLU_YAML = """task: eds_local_mmlu
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{{{subject.replace('_', ' ')}}}}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
"""

ARC_YAML = """task: eds_local_arc_challenge
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def sample_rows(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    keep = sorted(random.Random(f"{seed}:{path.name}").sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in keep]


def run_lm_eval(loaded: Any, folder: Path, tmp: Path, tasks: list[str], batch_size: int) -> dict[str, list[list[float]]]:
    """lm-eval's ``hf`` model (HFLM) wrapping the same weights, with a fresh tokenizer of its own."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    lm = HFLM(pretrained=loaded.model, tokenizer=AutoTokenizer.from_pretrained(folder), batch_size=batch_size)
    result = simple_evaluate(
        model=lm,
        tasks=tasks,
        batch_size=batch_size,
        log_samples=True,
        task_manager=TaskManager(include_path=str(tmp)),
    )
    out = {}
    for task in tasks:
        samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
        out[task] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="questions per benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=os.environ.get("EDS_DATA_ROOT", "../shared/benchmarks"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="reports/benchmarks/lm_eval_agreement.json")
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from eds.config import ModelConfig
    from eds.datasets import REGISTRY, to_item
    from eds.models import embedded_folder, load_model
    from eds.multiple_choice import choice_logliks

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    root = Path(args.root)
    sources = {"mmlu": root / "mmlu/test.parquet", "arc_challenge": root / "arc-challenge/test.parquet"}
    report: dict[str, Any] = {"n": args.n, "seed": args.seed, "lm_eval_version": None, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = {name: sample_rows(path, args.n, args.seed) for name, path in sources.items()}
        for name, data in rows.items():
            pq.write_table(pa.Table.from_pylist(data), tmp / f"{name}.parquet")
        (tmp / "mmlu.yaml").write_text(MMLU_YAML.format(path=tmp / "mmlu.parquet"), encoding="utf-8")
        (tmp / "arc.yaml").write_text(ARC_YAML.format(path=tmp / "arc_challenge.parquet"), encoding="utf-8")
        folder = embedded_folder("smollm2-135m-instruct")
        loaded = load_model(ModelConfig(device="cpu"))
        theirs = run_lm_eval(loaded, folder, tmp, ["eds_local_mmlu", "eds_local_arc_challenge"], args.batch_size)
    import lm_eval

    report["lm_eval_version"] = lm_eval.__version__
    for name, task, fmt in (("mmlu", "eds_local_mmlu", "mmlu"), ("arc_challenge", "eds_local_arc_challenge", "arc")):
        spec = REGISTRY[name]
        items = [to_item(row, i, spec, "local") for i, row in enumerate(rows[name])]
        ours = choice_logliks(loaded, items, fmt, batch_size=args.batch_size)  # type: ignore[arg-type]
        diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)) for a, b in zip(ours, theirs[task])])
        pred_ours = [int(np.argmax(r)) for r in ours]
        pred_theirs = [int(np.argmax(r)) for r in theirs[task]]
        answers = [item.answer for item in items]  # type: ignore[union-attr]
        report["tasks"][name] = {
            "questions": len(items),
            "choices_scored": int(diffs.size),
            "max_abs_loglik_diff": float(diffs.max()),
            "mean_abs_loglik_diff": float(diffs.mean()),
            "prediction_agreement": float(np.mean([a == b for a, b in zip(pred_ours, pred_theirs)])),
            "acc_eds": float(np.mean([p == y for p, y in zip(pred_ours, answers)])),
            "acc_lm_eval": float(np.mean([p == y for p, y in zip(pred_theirs, answers)])),
        }
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
