"""`glmtune web` killed (SIGKILL) and restarted while a training job runs: the job is still listed and finishes;
then the finished run is evaluated from the page's Evaluate action.

Driven over gradio's HTTP API with gradio_client (the same endpoints the page's buttons call), so it needs
no browser.
"""

import json
import time

import pytest

from glmtune.web.actions import FORM_FIELDS, preset_form
from glmtune.web.jobs import RUNNING, JobStore

pytestmark = pytest.mark.slow
FORM_KEYS = [k for k, _, _ in FORM_FIELDS]


def jobs_rows(client) -> list[dict]:
    table = client.predict(None, api_name="/on_tick")[0]
    return [dict(zip(table["headers"], row)) for row in table["data"]]


def test_web_killed_and_restarted_while_a_job_runs(web_server):
    from gradio_client import Client

    first = web_server()
    values, extra = preset_form("tiny/lora.yaml")
    values.update(max_steps=3, save_steps=100)
    form = ["restart-lora", "lora", *[values[k] for k in FORM_KEYS], extra]
    msg = Client(first.url, verbose=False).predict(*form, api_name="/on_start")[0]
    assert msg == "started job 1 (restart-lora)"
    first.kill()  # SIGKILL: the server gets no chance to clean up anything
    assert JobStore(first.workspace).get(1).status == RUNNING  # the job did not die with it

    second = web_server(first.workspace)  # a new server, a new port, the same workspace
    client = Client(second.url, verbose=False)
    row = next(r for r in jobs_rows(client) if r["id"] == 1)
    assert row["name"] == "restart-lora" and row["status"] in ("running", "finished")
    deadline = time.time() + 400
    while time.time() < deadline and row["status"] == "running":
        time.sleep(2)
        row = next(r for r in jobs_rows(client) if r["id"] == 1)
    assert row["status"] == "finished" and row["exit"] == 0 and row["step"] == "3/3"
    progress = client.predict(1, api_name="/job_view")[0]
    assert "finished" in progress and "step 3/3" in progress
    assert (first.workspace / "runs" / "restart-lora" / "summary.json").exists()

    # Evaluate the finished run (as `glmtune eval`, a job too) and read its report back.
    test = first.workspace / "data" / "test.jsonl"
    test.write_text(json.dumps({"messages": [{"role": "user", "content": "语速3"},
                                             {"role": "assistant", "content": "语速:3;评语:好"}]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    line, msg = client.predict("runs/restart-lora", "data/test.jsonl", "ev", 1, 8, False, False, "oral", "",
                               api_name="/on_eval")
    assert msg == "evaluation job 2 started" and line.startswith("glmtune eval --run ") and "--limit 1" in line
    deadline = time.time() + 300
    report = ""
    while time.time() < deadline and not report.startswith("# Evaluation"):
        time.sleep(2)
        report = client.predict(None, api_name="/on_tick")[8]
        assert "failed" not in report, report
    assert report.startswith("# Evaluation: restart-lora") and "Text metrics" in report
    assert (first.workspace / "evals" / "ev" / "report.json").exists()
    md, _png, line = client.predict(["ev"], api_name="/on_compare")
    assert md.startswith("# Eval comparison") and "| restart-lora |" in md, md
    assert line.startswith("glmtune eval compare ") and (first.workspace / "evals" / "compare" / "compare.json").exists()


def test_off_localhost_it_serves_only_with_the_token(web_server):
    """--host 0.0.0.0 with a token (from the environment): nothing is served until the login gives the token."""
    import httpx

    server = web_server(args=["--host", "0.0.0.0"], env={"GLMTUNE_WEB_TOKEN": "s3cret"})
    client = httpx.Client(base_url=server.url, trust_env=False, timeout=10)
    assert client.get("/config").status_code == 401
    assert client.get("/gradio_api/info").status_code == 401
    assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "me", "password": "s3cret"}).status_code == 200
    assert client.get("/config").status_code == 200
