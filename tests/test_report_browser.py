"""The HTML report renders in a real browser: headless Chromium (Debian's ``chromium`` package).

A small report is built in a temporary folder with the report stage's own code (synthetic
responses, real scoring, plots and rendering), then opened with ``chromium --headless
--dump-dom``. A probe script appended to a copy of the page writes, after the load event, every
image's natural size and every table's row count into the DOM; images must have decoded
(``naturalWidth > 0``) and the tables must have rows. A screenshot must be produced too.

Chromium is installed by ``scripts/install_chromium.sh`` (``make setup-browser``, part of
``make test``); if it is missing, this test tries that script once and skips, saying why, only
when it cannot be installed here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (i) {
    out.push("img " + i.getAttribute("src") + " " + i.naturalWidth + "x" + i.naturalHeight);
  });
  document.querySelectorAll("table").forEach(function (t) {
    out.push("table " + (t.className || "-") + " " + t.querySelectorAll("tbody tr").length);
  });
  var pre = document.createElement("pre");
  pre.id = "eds-probe";
  pre.textContent = out.join("\\n");
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--allow-file-access-from-files"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("EDS_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        script = REPO / "scripts" / "install_chromium.sh"
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        found = find_chromium()
        if found is None:
            pytest.skip(f"chromium is not installed and scripts/install_chromium.sh could not install it: "
                        f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return found


def build_report(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """reports/report.html (+ plots) in ``folder``, from synthetic responses scored by the real code."""
    from eds import config
    from eds.eval_tasks import TASKS, load_task
    from eds.eval_variants import build_variants
    from eds.evaluation import ResponseStore, judge_rows
    from eds.judge import KeywordJudge
    from eds.records import atomic_write_json
    from eds.eval_results import results_document, score_all
    from pipelines import report
    from pipelines.paths import EVAL_GENERALISATION, EVAL_RESPONSES, EVAL_RESULTS

    monkeypatch.chdir(folder)
    params = config.parse({"evaluate": {"sweep": {"eta": [1.0, 2.0]}, "samples": 2}}, check_paths=False)
    tasks = {name: load_task(TASKS[name], limit=12) for name in ("demo_benign", "demo_harmful", "demo_mc", "demo_math")}
    variants = build_variants(params.evaluate, params.steer, [3, 5])
    store, judge, rows = ResponseStore(EVAL_RESPONSES), KeywordJudge(), {}
    for k, variant in enumerate(variants):
        for name, loaded in tasks.items():
            base = [{"item_id": i.item_id, "task": name, "dataset": i.dataset, "variant": variant.name, "category": "ab"[j % 2],
                     "prompt": getattr(i, "prompt", getattr(i, "question", "")), "prompt_type": getattr(i, "prompt_type", None)}
                    for j, i in enumerate(loaded.items)]
            if TASKS[name].is_prompt_task:
                out = judge_rows([{**r, "response": "I'm sorry, I can't." if (j + k) % 3 == 0 else f"Sure & <b>{j}</b>"}
                                  for j, r in enumerate(base)], judge)
            else:
                out = [{**r, "correct": (j + k) % 2 == 0, "correct_norm": False} for j, r in enumerate(base)]
            store.save(variant.name, name, "synthetic", out)
            rows[(variant.name, name)] = out
    scores, deltas = score_all(params, variants, tasks, rows)
    atomic_write_json(EVAL_RESULTS, results_document(params, variants, tasks, scores, deltas, {"layers": [3, 5]}))
    cells = [{"source": s, "target": t, "auroc": None if t == "c" else 0.5 + 0.1 * i, "n_good": 3, "n_bad": 2, "note": ""}
             for i, (s, t) in enumerate([("a", "a (val)"), ("a", "b"), ("a", "c"), ("b", "a (val)"), ("b", "b"), ("b", "c")])]
    atomic_write_json(EVAL_GENERALISATION, {"enabled": True, "layer": 3, "cells": cells, "notes": {}})
    report.run(params)
    return folder / "reports" / "report.html"


def test_report_renders_tables_and_images_in_chromium(chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = build_report(tmp_path, monkeypatch)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text  # the report itself is static
    assert "Sure &amp; &lt;b&gt;" in text  # responses are escaped, never interpreted
    probe = page.with_name("probe.html")
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="eds-probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, f"no probe output; chromium said: {dom.stderr[-1500:]}"
    lines = match.group(1).splitlines()
    images = {parts[1]: parts[2] for parts in (line.split() for line in lines if line.startswith("img "))}
    assert set(images) == {"plots/pareto.png", "plots/tasks.png", "plots/generalisation.png"}
    for src, size in images.items():
        width, height = (int(x) for x in size.split("x"))
        assert width > 0 and height > 0, f"{src} did not load ({size})"
    tables = [line.split() for line in lines if line.startswith("table ")]
    classes = {t[1] for t in tables}
    assert {"scores", "deltas", "sweep", "tasks", "generalisation", "categories"} <= classes
    assert all(int(t[2]) > 0 for t in tables), tables
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2400", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
