"""End to end on the tiny GLM-4: train briefly, evaluate tuned vs base through the CLI; evaluate through
an OpenAI-compatible endpoint with the official client."""

import json

import pytest

from eval_helpers import MINI_SPEC, write_scoring_data

pytestmark = pytest.mark.slow


def test_train_then_eval_tuned_beats_base(tmp_path, tiny_glm4, capsys):
    from glmtune.cli import main

    train = write_scoring_data(tmp_path / "train.jsonl", 32, seed=1)
    test = write_scoring_data(tmp_path / "test.jsonl", 6, seed=2)
    spec = tmp_path / "mini.yaml"
    spec.write_text(MINI_SPEC, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", f"model.path={tiny_glm4}", f"data.train={train}", "data.val_size=0",
                 f"train.output_dir={run}", "train.max_steps=30", "train.batch_size=8", "train.lr=1e-2",
                 "method.rank=16", "method.alpha=32", "method.dropout=0", "train.warmup_ratio=0",
                 "train.save_steps=1000", "train.logging_steps=10"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--run", str(run), "--test", str(test), "--out", str(out), "--base-too", "--forgetting",
                 f"eval.field_spec={spec}", "eval.max_new_tokens=24", "eval.batch_size=4",
                 "eval.forgetting_max_new_tokens=8"]) == 0
    for f in ("predictions.jsonl", "report.json", "report.md", "scores.jsonl", "confusion.png",
              "base/report.json", "base/predictions.jsonl", "compare.md", "compare.png", "compare.json"):
        assert (out / f).stat().st_size > 0, f
    tuned = json.loads((out / "report.json").read_text("utf-8"))
    base = json.loads((out / "base" / "report.json").read_text("utf-8"))
    assert tuned["n"] == base["n"] == 6
    assert tuned["fields"]["format_validity"] > base["fields"]["format_validity"]
    assert tuned["base"]["fields"]["format_validity"] == base["fields"]["format_validity"]
    fg = tuned["forgetting"]
    assert fg["n"] == 30 and len(fg["items"]) == 30
    assert fg["delta"] == pytest.approx(fg["tuned_accuracy"] - fg["base_accuracy"])
    assert "## Forgetting check" in (out / "report.md").read_text("utf-8")
    table = (out / "compare.md").read_text("utf-8")
    assert "| metric | base | run |" in table and "| format validity |" in table
    # resume: a second run finds every prediction on disk and generates nothing
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--test", str(test), "--out", str(out),
                 f"eval.field_spec={spec}", "eval.max_new_tokens=24", "eval.batch_size=4"]) == 0
    again = json.loads((out / "report.json").read_text("utf-8"))
    assert (again["generation"]["resumed"], again["generation"]["generated"]) == (6, 0)
    assert again["fields"]["format_validity"] == tuned["fields"]["format_validity"]
    # compare verb on the two folders
    assert main(["eval", "compare", str(out / "base"), str(out), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_eval_through_openai_endpoint(tmp_path, tiny_glm4):
    from glmtune.cli import main
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection
    from glmtune.serve.loading import load_served

    # The product server (`glmtune serve`), with a prompt limit the long sample below exceeds.
    served = load_served(model=str(tiny_glm4), name="tiny")
    engine = served.engine
    app = create_app(served, ServeSection(api_key="sk-test", max_prompt_tokens=64))
    app.state.requests = 0

    @app.middleware("http")
    async def count(request, call_next):
        if request.url.path == "/v1/chat/completions":
            app.state.requests += 1
        return await call_next(request)

    server, base = serve_in_thread(app)
    url = f"{base}/v1"
    test = write_scoring_data(tmp_path / "test.jsonl", 5, seed=3)
    with test.open("a", encoding="utf-8") as f:   # one prompt over the server's context limit -> HTTP 400
        f.write(json.dumps({"id": "long", "messages": [{"role": "user", "content": "请评分" * 200},
                                                        {"role": "assistant", "content": "语速:1;停顿:1;评语:好"}]},
                           ensure_ascii=False) + "\n")
    out = tmp_path / "ev"
    args = ["eval", "--endpoint", url, "--endpoint-model", "tiny", "--api-key", "sk-test", "--test", str(test),
            "--out", str(out), "eval.max_new_tokens=8", "eval.batch_size=3", "eval.metrics=[text]"]
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 6 and app.state.requests == 6
    long = next(r for r in rows if r["prompt"][0]["content"].startswith("请评分请评分"))
    assert long["prediction"] == "" and long["error"].startswith("HTTP 400")
    # the endpoint path returns what the engine itself generates (the server's detokenizer drops an
    # incomplete UTF-8 tail, which a plain decode shows as U+FFFD)
    for r in rows:
        if "error" not in r:
            assert r["prediction"] == engine.generate([r["prompt"]], max_new_tokens=8)[0].text.rstrip("\ufffd")
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["model"] == f"endpoint:{url}#tiny"
    assert report["generation"]["request_errors"] == 1 and report["text"]["empty_predictions"] >= 1
    assert "fields" not in report
    assert main(args) == 0 and app.state.requests == 6          # resumed: no new requests
    bad_key = ["eval", "--endpoint", url, "--endpoint-model", "tiny", "--api-key", "wrong", "--test", str(test),
               "--out", str(tmp_path / "ev2")]
    assert main(bad_key) == 2                                   # a wrong key stops the run, it is not scored as 0
    assert not (tmp_path / "ev2" / "report.json").exists()
    server.should_exit = True
    server.thread.join(timeout=10)
