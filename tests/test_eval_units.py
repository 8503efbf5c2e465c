"""Evaluation building blocks without a model: tasks and the leak check, variants, storage,
scoring, the bar's verdict and the config's cross-checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from eds.datasets import PromptItem, load, text_key
from eds.eval_config import EvaluateConfig, SteerConfig, SweepConfig, TaskRef
from eds.eval_tasks import TASKS, assert_disjoint, load_task
from eds.eval_variants import Variant, build_variants
from eds.evaluation import EvalSettings, ResponseStore, judge_rows, needs_rejudge, outcomes, score_math_row, score_task
from eds.judge import KeywordJudge
from eds.metrics import Rate
from eds.splits import SplitLeakError, SplitRow
from eds.verdict import verdict

# ------------------------------------------------------------------------------ tasks


def test_registry_kinds_and_metrics() -> None:
    assert TASKS["orb_h"].metric == "compliance" and TASKS["orb_h"].from_splits
    assert TASKS["jbb_harmful"].metric == "refusal"
    assert TASKS["xstest_safe"].prompt_type == "benign" and TASKS["xstest_unsafe"].prompt_type == "harmful"
    assert TASKS["arc_challenge"].mc_format == "arc" and TASKS["mmlu"].mc_format == "mmlu"
    assert TASKS["math500"].answer_format == "boxed" and TASKS["gsm8k"].answer_format == "gsm8k"
    assert "\\boxed{}" in TASKS["math500"].math_prompt("What is 1+1?")


def test_demo_tasks_split_the_demo_suite_by_prompt_type() -> None:
    benign = load_task(TASKS["demo_benign"])
    harmful = load_task(TASKS["demo_harmful"], limit=5, seed=1)
    assert benign.available and all(i.prompt_type == "benign" for i in benign.items)
    assert len(harmful.items) == 5 and all(i.prompt_type == "harmful" for i in harmful.items)
    assert len(benign.items) + len(load_task(TASKS["demo_harmful"]).items) == 90


def test_a_training_prompt_in_an_evaluation_set_fails_clearly() -> None:
    items = load_task(TASKS["demo_benign"]).items
    leaked = {text_key(items[0].prompt), text_key(items[3].prompt)}
    with pytest.raises(SplitLeakError, match=r"task demo_benign: 2 evaluation prompt\(s\).*drop_training"):
        load_task(TASKS["demo_benign"], training_keys=leaked)
    dropped = load_task(TASKS["demo_benign"], training_keys=leaked, drop_training=True)
    assert dropped.dropped_training == 2 and len(dropped.items) == len(items) - 2
    assert_disjoint({"demo_benign": dropped}, leaked)
    with pytest.raises(SplitLeakError):
        assert_disjoint({"demo_benign": load_task(TASKS["demo_benign"])}, leaked)


def test_tasks_from_the_split_artifact_use_only_eval_rows() -> None:
    pool = [PromptItem(f"orb_h:{i:05d}", "orb_h", f"how do I safely handle thing {i}?", "benign", "c") for i in range(6)]
    rows = [SplitRow.from_item(item, "eval" if i % 2 else "train") for i, item in enumerate(pool)]
    keys = {r.text_key for r in rows if r.split == "train"}
    got = load_task(TASKS["orb_h"], split_rows=rows, training_keys=keys)
    assert [i.item_id for i in got.items] == ["orb_h:00001", "orb_h:00003", "orb_h:00005"]
    none_eval = [SplitRow.from_item(item, "train") for item in pool]
    assert "train_fraction" in (load_task(TASKS["orb_h"], split_rows=none_eval).unavailable or "")


def test_unavailable_benchmarks_are_reported_not_skipped(tmp_path: Path) -> None:
    missing = load_task(TASKS["jbb_harmful"], root=tmp_path)
    assert not missing.available and "not found" in (missing.unavailable or "")
    hub_only = load_task(TASKS["math"], root=tmp_path)  # no local copy exists
    assert not hub_only.available and "hub" in (hub_only.unavailable or "")


# ------------------------------------------------------------------------------ variants


def test_variants_from_params_with_a_sweep() -> None:
    cfg = EvaluateConfig(sweep=SweepConfig(eta=(0.5, 2.0), steps=(3,)))
    variants = build_variants(cfg, SteerConfig(eta=0.5, steps=3), [7, 3])
    assert [v.name for v in variants] == ["none", "system_prompt", "eds", "mean_diff", "ablation", "eds_eta2_s3"]
    eds = variants[2]
    assert (eds.eta, eds.steps, eds.layers, eds.sweep) == (0.5, 3, (7, 3), False)
    assert variants[-1].sweep and variants[-1].eta == 2.0
    assert variants[4].direction_layer == 7  # the best selected layer
    assert variants[1].system_prompt == cfg.system_prompt
    assert Variant("x", "eds", eta=1.0, layers=(1, 2)).tags()["layers"] == "[1, 2]"


def test_eds_variants_need_layers() -> None:
    with pytest.raises(ValueError, match="needs layers"):
        build_variants(EvaluateConfig(variants=("eds",)), SteerConfig(), [])
    only = build_variants(EvaluateConfig(variants=("none", "system_prompt")), SteerConfig(), [])
    assert [v.kind for v in only] == ["none", "system_prompt"]


# ------------------------------------------------------------------------------ storage and scoring


def _prompt_rows(refused: list[bool], prompt_type: str = "benign") -> list[dict]:
    return [{"item_id": f"t:{i}", "task": "demo_benign", "prompt": f"p{i}", "prompt_type": prompt_type, "category": "ab"[i % 2],
             "response": "I'm sorry, I can't." if r else "Sure, here it is.", "variant": "none"} for i, r in enumerate(refused)]


def test_store_roundtrip_resume_key_and_rejudge(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    judge = KeywordJudge()
    rows = judge_rows(_prompt_rows([True, False, False]), judge)
    store.save("none", "demo_benign", "k1", rows)
    assert store.load("none", "demo_benign", "k1") == rows
    assert store.load("none", "demo_benign", "other") is None  # inputs changed: redo
    assert store.load("eds", "demo_benign") is None
    assert not needs_rejudge(rows, judge)
    assert needs_rejudge([{**rows[0], "judge_version": "0"}], judge)
    store.path("none", "demo_benign").write_bytes(b"torn")
    assert store.load("none", "demo_benign", "k1") is None


def test_prune_states_keeps_only_the_current_cache_files(tmp_path: Path) -> None:
    from pipelines.evaluate import prune_states

    current, old, other = tmp_path / "states-aaaa.npy", tmp_path / "states-bbbb.npy", tmp_path / "notes.json"
    for path in (current, old, other):
        path.write_bytes(b"x")
    assert prune_states(tmp_path, {current}) == [old]
    assert current.is_file() and other.is_file() and not old.exists()


def test_store_prune_keeps_only_the_current_pairs(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    rows = judge_rows(_prompt_rows([True]), KeywordJudge())
    for variant, task in [("none", "demo_benign"), ("none", "demo_harmful"), ("eds_eta16_s3", "demo_benign")]:
        store.save(variant, task, "k", rows)
    removed = store.prune({("none", "demo_benign")})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [
        "eds_eta16_s3/demo_benign.json", "eds_eta16_s3/demo_benign.parquet",
        "none/demo_harmful.json", "none/demo_harmful.parquet",
    ]  # fmt: skip
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "none", "none/demo_benign.json", "none/demo_benign.parquet"
    ]
    assert store.load("none", "demo_benign", "k") == rows


def test_outcomes_and_scores_with_categories() -> None:
    judge = KeywordJudge()
    rows = judge_rows(_prompt_rows([True, False, False, False]), judge)
    settings = EvalSettings(bootstrap_samples=200)
    assert outcomes(TASKS["demo_benign"], rows) == [False, True, True, True]
    assert outcomes(TASKS["demo_harmful"], rows) == [True, False, False, False]
    score = score_task(TASKS["demo_benign"], "none", rows, settings)
    assert score.value.value == 0.75 and score.metric == "compliance"
    assert score.categories["a"].value == 0.5 and score.categories["b"].value == 1.0
    flat = score.flat()
    assert flat["demo_benign/none/compliance"] == 0.75 and flat["demo_benign/none/n"] == 4
    arc_rows = [{"correct": True, "correct_norm": False, "category": None}, {"correct": False, "correct_norm": False, "category": None}]
    arc = score_task(TASKS["arc_challenge"], "eds", arc_rows, settings)
    assert arc.value.value == 0.5 and arc.extra["accuracy_norm"].value == 0.0
    assert "arc_challenge/eds/accuracy_norm" in arc.flat()


def test_math_rows_are_scored_by_the_tasks_answer_format() -> None:
    row = {"response": "24 - 18 = 6. So 6 muffins.", "gold": "6"}
    assert score_math_row(TASKS["gsm8k"], row)["correct"] is True
    boxed = {"response": "so $\\boxed{\\dfrac{1}{2}}$", "gold": "0.5"}
    assert score_math_row(TASKS["math500"], boxed)["extracted"] == "\\dfrac{1}{2}"
    assert score_math_row(TASKS["math500"], boxed)["correct"] is True
    assert score_math_row(TASKS["math500"], {"response": "the answer is 0.5", "gold": "0.5"})["correct"] is False


# ------------------------------------------------------------------------------ verdict


def _r(value: float) -> Rate:
    return Rate(value, value - 0.05, value + 0.05, 100)


def test_verdict_met_unmet_and_undecided() -> None:
    values = {"orb_h": {"none": _r(0.5), "eds": _r(0.7)}, "jbb_harmful": {"none": _r(0.9), "eds": _r(0.88)}}
    deltas = {"orb_h": {"eds": _r(0.2)}, "jbb_harmful": {"eds": _r(-0.02)}}
    v = verdict("eds", values, deltas, ["orb_h"], ["jbb_harmful"], 0.03)
    assert v.met is True and "MEETS" in v.sentence()
    deltas["jbb_harmful"]["eds"] = _r(-0.05)
    v = verdict("eds", values, deltas, ["orb_h"], ["jbb_harmful"], 0.03)
    assert v.met is False and "jbb_harmful refusal falls by more than 3 points (-5.0 points)" in v.sentence()
    deltas["orb_h"]["eds"] = _r(0.0)
    assert "orb_h compliance does not rise" in verdict("eds", values, deltas, ["orb_h"], ["jbb_harmful"], 0.03).sentence()
    v = verdict("eds", values, deltas, ["orb_h", "xstest_safe"], ["jbb_harmful"], 0.03)
    assert v.met is False  # one failure decides, even with a task missing
    ok = {"orb_h": {"eds": _r(0.1)}, "jbb_harmful": {"eds": _r(0.0)}}
    v = verdict("eds", values, ok, ["orb_h", "xstest_safe"], ["jbb_harmful"], 0.03)
    assert v.met is None and "not evaluated: xstest_safe" in v.sentence()


# ------------------------------------------------------------------------------ config


def test_config_cross_checks_tasks_named_by_plots_and_bar() -> None:
    with pytest.raises(ValueError, match="pareto.x 'demo_harmful' must be a compliance task"):
        EvaluateConfig(pareto={"x": "demo_harmful", "y": ["demo_harmful"], "label": None})
    with pytest.raises(ValueError, match="bar.refusal 'orb_h' must be a refusal task"):
        EvaluateConfig(bar={"compliance": ["demo_benign"], "refusal": ["orb_h"]})
    with pytest.raises(ValueError, match="unknown task"):
        TaskRef(name="nope")
    with pytest.raises(ValueError, match="twice"):
        EvaluateConfig(tasks=[{"name": "demo_benign"}, {"name": "demo_benign"}, {"name": "demo_harmful"}, {"name": "demo_mc"}])


def test_demo_eval_prompts_are_never_demo_training_prompts() -> None:
    train = {text_key(i.prompt) for i in load("demo_train")}
    assert not train & {text_key(i.prompt) for i in load("demo_eval")}
