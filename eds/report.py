"""The human report: tables, plots, model, judge, params, and sample responses, as Markdown and HTML.

Everything comes from the evaluate stage's JSON (``reports/eval/results.json``,
``reports/eval/generalisation.json``) and the stored responses; nothing is typed in by hand --
including the sentence that says whether EDS meets the bar (:mod:`eds.verdict`).
Sample responses are taken from **benign prompts only** (compliance tasks, ``prompt_type ==
"benign"``), unsteered next to EDS, those EDS changed from a refusal to an answer first.

The HTML is self-contained (inline CSS, no scripts, no external resources); images are ``<img>``
elements with paths relative to the report's folder (``plots/pareto.png``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Table = tuple[list[str], list[list[str]]]


@dataclass
class ReportData:
    """What one report shows."""

    results: dict[str, Any]
    generalisation: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # caption -> path relative to the report
    params_yaml: str = ""
    lm_eval_agreement: dict[str, Any] | None = None


# ------------------------------------------------------------------------------ formatting


def fmt_rate(entry: Mapping[str, Any] | None, points: bool = False) -> str:
    """``0.620 [0.550, 0.690]`` (or ``+6.0 [+1.0, +11.0]`` points); ``n/a`` when undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    if points:
        return f"{entry['value'] * 100:+.1f} [{entry['ci_low'] * 100:+.1f}, {entry['ci_high'] * 100:+.1f}]"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _task_order(results: Mapping[str, Any]) -> list[str]:
    """Tasks in the configured order (JSON objects are written with sorted keys)."""
    order = results.get("task_order") or list(results["tasks"])
    return [t for t in order if t in results["tasks"]]


def _available_tasks(results: Mapping[str, Any]) -> list[str]:
    return [t for t in _task_order(results) if results["tasks"][t]["available"]]


def _variants(results: Mapping[str, Any]) -> list[str]:
    return [v["name"] for v in results["variants"]]


# ------------------------------------------------------------------------------ tables


def scores_table(results: Mapping[str, Any]) -> Table:
    """Rows = tasks (with their metric and n), columns = variants: the metric with its 95% interval."""
    variants = _variants(results)
    header = ["task", "metric", "n", *variants]
    rows = []
    for t in _available_tasks(results):
        metric = results["tasks"][t]["metric"]
        rows.append([t, metric, str(results["tasks"][t]["n"]), *[fmt_rate(results["scores"][t].get(v)) for v in variants]])
        extras = sorted({name for v in variants for name in (results["scores"][t].get(v) or {}).get("extra", {})})
        for name in extras:
            rows.append([t, name, str(results["tasks"][t]["n"]),
                         *[fmt_rate((results["scores"][t].get(v) or {}).get("extra", {}).get(name)) for v in variants]])
    return header, rows


def deltas_table(results: Mapping[str, Any]) -> Table:
    """Rows = tasks, columns = variants: paired difference to the unsteered model, in points."""
    variants = [v for v in _variants(results) if v != results.get("baseline", "none")]
    tasks = [t for t in _available_tasks(results) if t in results.get("deltas", {})]
    header = ["task", *variants]
    rows = [[t, *[fmt_rate(results["deltas"][t].get(v), points=True) for v in variants]] for t in tasks]
    return header, rows


def tasks_table(results: Mapping[str, Any]) -> Table:
    header = ["task", "description", "dataset", "measures", "n", "training prompts dropped", "status"]
    rows = []
    for name in _task_order(results):
        info = results["tasks"][name]
        status = "evaluated" if info["available"] else f"NOT AVAILABLE: {info['unavailable']}"
        rows.append([name, info["description"], info["dataset"], info["metric"], str(info["n"]), str(info["dropped_training"]), status])
    return header, rows


def sweep_table(results: Mapping[str, Any]) -> Table:
    """One row per EDS variant: its settings, each bar check's difference, and whether the bar is met."""
    records = {v["name"]: v for v in results["variants"]}
    verdicts = results.get("verdicts", [])
    checks = [f"{c['task']} {c['kind']}" for c in (verdicts[0]["checks"] if verdicts else [])]
    header = ["variant", "eta", "steps", *[f"Δ {c}" for c in checks], "bar met"]
    rows = []
    for v in sorted(verdicts, key=lambda x: (records[x["variant"]].get("eta") or 0, records[x["variant"]].get("steps") or 0)):
        rec = records[v["variant"]]
        cells = [fmt_rate(c["delta"], points=True) for c in v["checks"]]
        met = {True: "yes", False: "no", None: "undecided"}[v["met"]]
        rows.append([v["variant"], f"{rec.get('eta')}", f"{rec.get('steps')}", *cells, met])
    return header, rows


def category_tables(results: Mapping[str, Any]) -> dict[str, Table]:
    """Per task with more than one category: rows = categories, columns = variants (value, n)."""
    out = {}
    for task in _available_tasks(results):
        by_variant = results["scores"][task]
        variants = [v for v in _variants(results) if v in by_variant]
        cats = sorted({c for v in variants for c in by_variant[v].get("categories", {})})
        if len(cats) < 2:
            continue
        header = [results["tasks"][task]["category"], "n", *variants]
        rows = []
        for cat in cats:
            first = by_variant[variants[0]]["categories"].get(cat, {})
            cells = []
            for v in variants:
                entry = by_variant[v]["categories"].get(cat)
                cells.append("n/a" if not entry or entry.get("value") is None else
                             f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]")
            rows.append([cat, str(first.get("n", "")), *cells])
        out[task] = (header, rows)
    return out


def generalisation_table(gen: Mapping[str, Any]) -> Table | None:
    cells = gen.get("cells") or []
    if not cells:
        return None
    sources = list(dict.fromkeys(c["source"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    lookup = {(c["source"], c["target"]): c for c in cells}
    header = ["trained on \\ evaluated on", *[f"{t} (good/bad {lookup[(sources[0], t)]['n_good']}/{lookup[(sources[0], t)]['n_bad']})" for t in targets]]
    rows = []
    for s in sources:
        row = [s]
        for t in targets:
            c = lookup.get((s, t))
            row.append("n/a" if c is None or c["auroc"] is None else f"{c['auroc']:.3f}")
        rows.append(row)
    return header, rows


def generalisation_notes(gen: Mapping[str, Any]) -> dict[str, str]:
    """Why a source or target has no numbers (untrainable source, missing target), one line each."""
    notes = dict(gen.get("notes") or {})
    for cell in gen.get("cells") or []:
        if cell.get("note", "").startswith("source not trainable"):
            notes.setdefault(f"source {cell['source']}", cell["note"])
    return notes


# ------------------------------------------------------------------------------ samples


def pick_samples(rows_by_variant: Mapping[str, Sequence[Mapping[str, Any]]], n: int, variant: str = "eds",
                 baseline: str = "none") -> list[dict[str, Any]]:
    """Up to ``n`` benign-prompt examples, baseline response next to ``variant``'s: first those the
    variant turned from a refusal into an answer, then the rest in order."""
    if n <= 0 or variant not in rows_by_variant or baseline not in rows_by_variant:
        return []
    mine = {r["item_id"]: r for r in rows_by_variant[variant] if r.get("prompt_type") == "benign"}
    pairs = [(b, mine[b["item_id"]]) for b in rows_by_variant[baseline]
             if b.get("prompt_type") == "benign" and b["item_id"] in mine]
    pairs.sort(key=lambda p: (not (p[0]["refused"] and not p[1]["refused"]), p[0]["refused"] == p[1]["refused"]))
    return [{"task": b["task"], "item_id": b["item_id"], "prompt": b["prompt"], "before": b["response"],
             "before_refused": bool(b["refused"]), "after": a["response"], "after_refused": bool(a["refused"]),
             "variant": variant, "baseline": baseline} for b, a in pairs[:n]]


# ------------------------------------------------------------------------------ markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(results: Mapping[str, Any]) -> str:
    """The computed statement about the main EDS variant (or why there is none)."""
    verdicts = results.get("verdicts", [])
    main = [v for v in verdicts if v["variant"] == "eds"] or verdicts[:1]
    if not main:
        return "No EDS variant was evaluated, so the bar is not assessed."
    text = main[0]["sentence"]
    others = [v for v in verdicts if v is not main[0]]
    if main[0]["met"] is not True and others:
        meeting = [v["variant"] for v in others if v["met"] is True]
        text += (f" In the eta sweep, {', '.join(meeting)} meet{'s' if len(meeting) == 1 else ''} the bar." if meeting
                 else " No point of the eta sweep meets it either (see the sweep table: each row shows which check fails).")
    return text


def render_markdown(data: ReportData) -> str:
    r = data.results
    parts = [
        "# EDS evaluation report",
        "",
        f"Model: `{r['model']}` · judge: `{r['judge']['name']}` · profile: `{r['profile']}` · steered layers: "
        f"{r.get('selected_layers')}",
        "",
        "## Verdict",
        "",
        f"**{headline(r)}**",
        "",
        "## Scores (95% bootstrap intervals)",
        "",
        "Compliance = 1 - refusal rate on benign prompts (higher: less over-refusal); refusal = refusal rate on harmful "
        "prompts (higher: safer; 1 - attack success); accuracy for multiple choice (lm-eval protocol, log-likelihood) "
        "and math (generation, extracted final answer).",
        "",
        md_table(scores_table(r)),
        "",
        "## Difference to the unsteered model (points, paired bootstrap 95% interval)",
        "",
        md_table(deltas_table(r)),
        "",
    ]
    if r.get("verdicts"):
        parts += ["## Eta sweep against the bar", "", md_table(sweep_table(r)), ""]
    for caption, path in data.plots.items():
        parts += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    parts += ["## Tasks", "", md_table(tasks_table(r)), ""]
    cats = category_tables(r)
    if cats:
        parts += ["## Per-category breakdown", ""]
        for task, table in cats.items():
            parts += [f"### {task}", "", md_table(table), ""]
    gen_table = generalisation_table(data.generalisation)
    parts += ["## Generalisation matrix", ""]
    if gen_table:
        parts += [f"AUROC of the energy (bad vs good states) at layer {data.generalisation.get('layer')}; EBMs trained on each "
                  "source's train rows, targets labelled by the unsteered model's judged responses.", "", md_table(gen_table), ""]
    else:
        parts += [f"Not computed: {data.generalisation.get('note', 'disabled')}.", ""]
    for name, note in generalisation_notes(data.generalisation).items():
        parts += [f"- {name}: {note}"]
    if data.lm_eval_agreement:
        parts += ["", "## Agreement with lm-evaluation-harness", "", md_table(agreement_table(data.lm_eval_agreement)), ""]
    parts += ["", "## Sample responses (benign prompts only)", ""]
    for s in data.samples:
        parts += [f"**{s['task']} · {s['item_id']}** — {s['prompt']}", "",
                  f"- {s['baseline']} ({'refused' if s['before_refused'] else 'answered'}): {s['before']}",
                  f"- {s['variant']} ({'refused' if s['after_refused'] else 'answered'}): {s['after']}", ""]
    if not data.samples:
        parts += ["(none: no benign prompt task was evaluated for both the unsteered model and EDS)", ""]
    parts += ["## Parameters", "", "```yaml", data.params_yaml.rstrip(), "```", ""]
    return "\n".join(parts)


def agreement_table(agreement: Mapping[str, Any]) -> Table:
    header = ["task", "questions", "max |Δ loglik|", "prediction agreement", "acc (eds)", "acc (lm-eval)"]
    rows = [[t, str(v["questions"]), f"{v['max_abs_loglik_diff']:.2e}", f"{v['prediction_agreement']:.3f}",
             f"{v['acc_eds']:.3f}", f"{v['acc_lm_eval']:.3f}"] for t, v in agreement.get("tasks", {}).items()]
    return header, rows


# ------------------------------------------------------------------------------ html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1,h2,h3{font-weight:600} table{border-collapse:collapse;margin:0.8rem 0;font-size:0.85rem}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f3f3f3}
.verdict{padding:0.8rem 1rem;border-radius:6px;font-weight:600} .met{background:#e3f6e3} .unmet{background:#fde8e8}
.undecided{background:#fff6d6} figure{margin:1rem 0} img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:0.8rem;overflow-x:auto;font-size:0.8rem} .sample{border-left:3px solid #aac;padding-left:0.8rem;margin:0.8rem 0}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def html_table(table: Table, css_class: str = "") -> str:
    header, rows = table
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(data: ReportData) -> str:
    r = data.results
    main = next((v for v in r.get("verdicts", []) if v["variant"] == "eds"), None)
    klass = "undecided" if main is None or main["met"] is None else ("met" if main["met"] else "unmet")
    body = [
        "<h1>EDS evaluation report</h1>",
        f"<p>Model: <code>{_e(r['model'])}</code> · judge: <code>{_e(r['judge']['name'])}</code> · profile: "
        f"<code>{_e(r['profile'])}</code> · steered layers: {_e(r.get('selected_layers'))}</p>",
        f'<h2>Verdict</h2><p class="verdict {klass}" id="verdict">{_e(headline(r))}</p>',
        "<h2>Scores (95% bootstrap intervals)</h2>",
        "<p>Compliance = 1 - refusal rate on benign prompts; refusal = refusal rate on harmful prompts (1 - attack "
        "success); accuracy for multiple choice (lm-eval protocol) and math (extracted final answer).</p>",
        html_table(scores_table(r), "scores"),
        "<h2>Difference to the unsteered model (points, paired bootstrap 95% interval)</h2>",
        html_table(deltas_table(r), "deltas"),
    ]
    if r.get("verdicts"):
        body += ["<h2>Eta sweep against the bar</h2>", html_table(sweep_table(r), "sweep")]
    body += ["<h2>Plots</h2>"]
    for caption, path in data.plots.items():
        body.append(f'<figure><img src="{_e(path)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
    body += ["<h2>Tasks</h2>", html_table(tasks_table(r), "tasks")]
    cats = category_tables(r)
    if cats:
        body.append("<h2>Per-category breakdown</h2>")
        for task, table in cats.items():
            body += [f"<h3>{_e(task)}</h3>", html_table(table, "categories")]
    body.append("<h2>Generalisation matrix</h2>")
    gen_table = generalisation_table(data.generalisation)
    if gen_table:
        body += [f"<p>AUROC of the energy at layer {_e(data.generalisation.get('layer'))}; EBMs trained on each source's "
                 "train rows; targets labelled by the unsteered model's judged responses.</p>", html_table(gen_table, "generalisation")]
    else:
        body.append(f"<p>Not computed: {_e(data.generalisation.get('note', 'disabled'))}.</p>")
    notes = generalisation_notes(data.generalisation)
    if notes:
        body.append("<ul>" + "".join(f"<li>{_e(t)}: {_e(n)}</li>" for t, n in notes.items()) + "</ul>")
    if data.lm_eval_agreement:
        body += ["<h2>Agreement with lm-evaluation-harness</h2>", html_table(agreement_table(data.lm_eval_agreement), "agreement")]
    body.append("<h2>Sample responses (benign prompts only)</h2>")
    for s in data.samples:
        body.append(
            f'<div class="sample"><p><b>{_e(s["task"])} · {_e(s["item_id"])}</b>: {_e(s["prompt"])}</p>'
            f"<p><i>{_e(s['baseline'])} ({'refused' if s['before_refused'] else 'answered'})</i>: {_e(s['before'])}</p>"
            f"<p><i>{_e(s['variant'])} ({'refused' if s['after_refused'] else 'answered'})</i>: {_e(s['after'])}</p></div>"
        )
    if not data.samples:
        body.append("<p>(none: no benign prompt task was evaluated for both the unsteered model and EDS)</p>")
    body += ["<h2>Parameters</h2>", f"<pre>{_e(data.params_yaml)}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>EDS evaluation report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


__all__ = [
    "ReportData",
    "category_tables",
    "deltas_table",
    "fmt_rate",
    "generalisation_table",
    "headline",
    "html_table",
    "md_table",
    "pick_samples",
    "render_html",
    "render_markdown",
    "scores_table",
    "sweep_table",
    "tasks_table",
]
