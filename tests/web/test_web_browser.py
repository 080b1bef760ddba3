"""`glmtune web` driven in headless Chromium on the tiny model: the whole path, surviving a page reload.

Data: upload a file with a bad line and see `file:line` reported. Plan the form's config. Train: start a short LoRA job, reload the page,
see the job still listed, watch it finish with a loss curve. Export with a 2 GB shard limit, verified. Chat with
the export and get an answer. Evaluate the run on a test file. A screenshot of each tab is taken (GLMTUNE_WEB_SHOTS=DIR keeps them there;
`GLMTUNE_WEB_SHOTS=docs/img` refreshes the README's).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"messages": [{"role": "user", "content": "语速3"}, {"role": "assistant", "content": "语速:3;评语:好"}]}


def write_data(path: Path) -> Path:
    lines = [json.dumps(GOOD, ensure_ascii=False), json.dumps(GOOD, ensure_ascii=False), "{not json",
             json.dumps({"messages": [{"role": "user", "content": "只有问题"}]}, ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def text_of(page, selector: str) -> str:
    return page.locator(selector).input_value()


def wait_text(page, selector: str, needle: str, timeout_ms: int):
    """Wait until the textbox/textarea under `selector` contains `needle`."""
    page.wait_for_function(
        """([sel, needle]) => {const el = document.querySelector(sel);
                               return el && (el.value || el.innerText || '').includes(needle);}""",
        arg=[selector, needle], timeout=timeout_ms)


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(500)


def test_whole_path_in_headless_chromium(web_server, browser, tmp_path):
    shots = Path(os.environ.get("GLMTUNE_WEB_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    server = web_server()
    ws = server.workspace
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
    page.locator("#data_check").wait_for(timeout=90_000)

    # Data: upload, check, the bad lines reported as file:line.
    page.locator("#data_upload input[type=file]").set_input_files(str(write_data(tmp_path / "chat.jsonl")))
    wait_text(page, "#data_summary textarea", "saved to data/chat.jsonl", 60_000)
    page.locator("#data_check").click()
    wait_text(page, "#data_problems textarea", "data/chat.jsonl:3: <json>: bad JSON", 60_000)
    problems = text_of(page, "#data_problems textarea")
    assert "data/chat.jsonl:4: messages: no assistant turn to learn from" in problems
    assert text_of(page, "#data_summary textarea") == "data/chat.jsonl: 2 good record(s), 2 problem(s)"
    page.locator("#data_stats").click()
    wait_text(page, "#stats_line textarea", "2 samples with", 120_000)
    page.locator("#stats_hist img").first.wait_for(timeout=30_000)  # the histogram, drawn with the real template
    assert "glmtune data stats data.train=" in page.locator("#stats_command").inner_text()
    page.locator("#data_render").click()
    wait_text(page, "#render_problems textarea", "data/chat.jsonl:3: <json>: bad JSON", 120_000)
    page.wait_for_function("() => (document.querySelector('#render_html') || {}).innerText?.includes('supervised:')",
                           timeout=60_000)
    assert (ws / "data" / "chat.jsonl").exists()
    # Oral build from uploaded ISE XML files: counts shown, the built file becomes the picked data file.
    syn = tmp_path / "syn"
    subprocess.run([sys.executable, "-m", "glmtune", "oral", "synth", "--n", "3", "--out", str(syn), "--xml"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    (syn / "xml" / "notes.txt").write_text("not an ISE result", encoding="utf-8")
    page.locator("#ise_upload input[type=file]").set_input_files([str(p) for p in sorted((syn / "xml").iterdir())])
    wait_text(page, "#oral_result textarea", "saved 4 file(s) to ise/ise", 60_000)
    page.locator("#oral_build").click()
    wait_text(page, "#oral_result textarea", "wrote 3 samples to data/oral.jsonl", 60_000)
    assert "ise/ise: 3 read, 0 skipped, 1 failed" in text_of(page, "#oral_result textarea")
    assert "glmtune oral build" in page.locator("#oral_command").inner_text()
    page.screenshot(path=str(shots / "web-data.png"), full_page=True)

    # Plan: `glmtune plan` on the Train form's config, for a named GPU.
    open_tab(page, "Plan")
    page.locator("#plan_run").click()
    wait_text(page, "#plan_text textarea", "recommendations", 120_000)
    assert "RTX4090-24GB" in text_of(page, "#plan_text textarea")
    page.locator("#plan_hist img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "web-plan.png"), full_page=True)

    # Train: a bad value is rejected with the config's own message; then a short LoRA job.
    open_tab(page, "Train")
    page.locator("#run_name textarea").fill("web-lora")
    page.locator("#lr input").fill("-1")
    page.locator("#validate").click()
    wait_text(page, "#train_msg textarea", "train.lr: Input should be greater than 0", 30_000)
    page.locator("#lr input").fill("0.005")
    page.locator("#max_steps input").fill("4")
    page.locator("#save_steps input").fill("2")
    page.locator("#start").click()
    wait_text(page, "#train_msg textarea", "started job 1 (web-lora)", 60_000)
    command = page.locator("#command").inner_text()
    assert "glmtune train" in command and "train.max_steps=4" in command

    # Reload: the page keeps nothing; the job is read back from jobs.sqlite.
    page.reload(wait_until="domcontentloaded")
    open_tab(page, "Train")
    page.wait_for_function("""() => {const t = document.querySelector('#jobs_table');
                                     return t && t.innerText.includes('web-lora');}""", timeout=60_000)
    assert any(s in page.locator("#jobs_table").inner_text() for s in ("running", "finished"))
    page.wait_for_function("() => (document.querySelector('#progress') || {}).innerText?.includes('finished')",
                           timeout=400_000)
    progress = page.locator("#progress").inner_text()
    assert "step 4/4" in progress and "loss" in progress
    # The loss curve: a chart drawn from metrics.jsonl (matplotlib, shown as an image).
    page.locator("#loss_plot img").first.wait_for(timeout=30_000)
    metrics = [json.loads(x) for x in (ws / "runs" / "web-lora" / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in metrics) == 4
    assert "run folder:" in page.locator("#log_tail textarea").input_value()
    page.locator("#validate").click()  # the form (reset by the reload) shows its YAML and command again
    wait_text(page, "#train_msg textarea", "config is valid", 30_000)
    page.screenshot(path=str(shots / "web-train.png"), full_page=True)

    # Export with a 2 GB shard limit; the verify result shows.
    open_tab(page, "Export")
    page.locator("#export_run input").click()
    page.get_by_role("option", name="runs/web-lora").click()
    assert page.locator("#export_size textarea").input_value() == "2GB"
    page.locator("#export_start").click()
    wait_text(page, "#export_command textarea, #export_command", "--size 2GB", 30_000)
    wait_text(page, "#export_status textarea", "verify: passed", 300_000)
    report = json.loads((ws / "exports" / "merged" / "export.json").read_text())
    assert report["max_shard_bytes"] == 2_000_000_000
    page.screenshot(path=str(shots / "web-export.png"), full_page=True)

    # One click to chat with the export; ask and get an answer.
    page.locator("#export_chat").click()
    page.wait_for_function("() => document.querySelector('#chat_source input')?.value === 'export: exports/merged'",
                           timeout=30_000)
    box = page.locator("#msg textarea")
    box.fill("语速3")
    box.press("Enter")
    page.wait_for_function(
        """() => {const bots = document.querySelectorAll('#chat .bot, #chat [data-testid="bot"]');
                  return bots.length > 0 && bots[bots.length-1].innerText.trim().length > 0;}""", timeout=180_000)
    wait_text(page, "#chat_status textarea", "answered with", 60_000)
    page.screenshot(path=str(shots / "web-chat.png"), full_page=True)
    page.locator("#clear").click()
    page.wait_for_function("() => !document.querySelector('#chat').innerText.includes('语速3')", timeout=30_000)

    # Evaluate the run on a test file of the workspace: `glmtune eval` as a job, its report shown.
    (ws / "data" / "test.jsonl").write_text(json.dumps(GOOD, ensure_ascii=False) + "\n", encoding="utf-8")
    open_tab(page, "Evaluate")
    page.locator("#eval_run input").click()
    page.get_by_role("option", name="runs/web-lora").click()
    page.wait_for_timeout(2500)  # the next refresh lists the new file
    page.locator("#eval_test input").click()
    page.get_by_role("option", name="data/test.jsonl").click()
    page.locator("#eval_max_new input").fill("16")
    page.locator("#eval_start").click()
    wait_text(page, "#eval_msg textarea", "evaluation job 3 started", 30_000)
    page.get_by_text("Latest evaluation job: report.md").click()  # open the job's report.md
    page.wait_for_function("() => (document.querySelector('#eval_report') || {}).innerText?.includes('Text metrics')",
                           timeout=300_000)
    assert (ws / "evals" / "eval" / "report.json").exists()
    page.get_by_text("Latest evaluation job: report.md").click()  # and fold it again for the tables below
    # Its tables: the metrics of `eval compare`, the forgetting line (not asked for here).
    page.wait_for_timeout(2500)  # the next refresh lists the new evaluation
    page.locator("#view_pick input").click()
    page.get_by_role("option", name="eval", exact=True).click()
    page.locator("#view_run").click()
    page.wait_for_function("() => (document.querySelector('#view_table') || {}).innerText?.includes('format validity')",
                           timeout=60_000)
    wait_text(page, "#forget_line textarea", "no forgetting check", 30_000)
    page.screenshot(path=str(shots / "web-evaluate.png"), full_page=True)
