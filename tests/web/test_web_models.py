"""The Evaluate and Chat tabs' actions on real (tiny) trained runs, against the CLI and the run's own engine.

- Evaluate: the page's eval job (`glmtune eval ... --base-too --forgetting`) and its tables; the confusion
  matrices it shows equal those `glmtune eval` writes when run by hand on the same run and test file.
- Chat: a running `glmtune serve` reached as an OpenAI-compatible endpoint answers, turn by turn, exactly what
  the run's own engine answers through the same streaming function; several adapters on one base answer as
  each run alone does; stateless sends each question alone.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmtune.serve.webui import stream_reply
from glmtune.web import actions
from glmtune.web.chat import ChatModels, adapter_runs
from glmtune.web.workspace import Workspace

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SPEC = ("name: mini\nfields:\n  - {name: 语速, type: int, allowed: [1,2,3,4,5]}\n"
        "  - {name: 停顿, type: int, allowed: [1,2,3,4,5]}\n  - {name: 评语, type: str}\n")


def write_scoring(path: Path, n: int, seed: int) -> Path:
    """Answers that repeat the prompt's score (`语速:v;停顿:v;评语:好`): a tiny model learns the format fast."""
    import random

    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            v = rng.randint(1, 5)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"朗读得分{v}，请评分"},
                                             {"role": "assistant", "content": f"语速:{v};停顿:{v};评语:好"}]},
                               ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_glm4):
    """A workspace with two LoRA runs on the tiny GLM-4: `a` learned the format, `b` trained briefly."""
    from glmtune.cli import main

    ws = Workspace(tmp_path_factory.mktemp("webmodels") / "ws")
    train = write_scoring(ws.data_dir / "train.jsonl", 32, seed=1)
    write_scoring(ws.data_dir / "test.jsonl", 6, seed=2)
    (ws.data_dir / "mini.yaml").write_text(SPEC, encoding="utf-8")
    common = [f"model.path={tiny_glm4}", f"data.train={train}", "data.val_size=0", "train.batch_size=8",
              "method.rank=16", "method.alpha=32", "method.dropout=0", "train.warmup_ratio=0", "train.save_steps=1000",
              "train.logging_steps=10"]
    assert main(["train", *common, f"train.output_dir={ws.runs_dir / 'a'}", "train.max_steps=30",
                 "train.lr=1e-2"]) == 0
    assert main(["train", *common, f"train.output_dir={ws.runs_dir / 'b'}", "train.max_steps=6", "train.lr=3e-3",
                 "train.seed=7", "train.logging_steps=2"]) == 0
    return ws


def wait_job(ws, job_id, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = ws.jobs.get(job_id)
        if job.status != "running":
            return job
        time.sleep(1)
    pytest.fail(f"job {job_id} still running:\n{ws.jobs.get(job_id).log_tail(3000)}")


def test_eval_tables_equal_the_cli(trained):
    ws = trained
    job, line = actions.start_eval(ws, "runs/a", "data/test.jsonl", "ev", max_new_tokens=24, base_too=True,
                                   forgetting=True, field_spec="data/mini.yaml",
                                   extra="eval.forgetting_max_new_tokens=8\neval.batch_size=4")
    assert "--base-too" in line and "--forgetting" in line and "eval.field_spec=" in line
    job = wait_job(ws, job.id)
    assert job.status == "finished", job.log_tail(3000)
    view = actions.eval_view(ws, "ev")
    # The same evaluation typed by hand (tuned model only): the page's confusion matrices are the CLI's.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = ws.root / "evals" / "cli_eval"
    p = subprocess.run([sys.executable, "-m", "glmtune", "eval", "--run", str(ws.runs_dir / "a"), "--test",
                        str(ws.data_dir / "test.jsonl"), "--out", str(out), f"eval.field_spec={ws.data_dir / 'mini.yaml'}",
                        "eval.max_new_tokens=24", "eval.batch_size=4"], capture_output=True, text=True, env=env,
                       timeout=900)
    assert p.returncode == 0, p.stderr
    cli = json.loads((out / "report.json").read_text("utf-8"))
    shown = 0
    for field, m in cli["fields"]["fields"].items():
        cm = m.get("confusion")  # numeric fields have one; free text (评语) has none
        if not cm or not cm["labels"]:
            continue
        page = view["confusions"][f"{field} · tuned"]
        assert page["header"][1:] == [str(x) for x in cm["labels"]]
        assert [r[1:] for r in page["rows"]] == cm["matrix"] and [r[0] for r in page["rows"]] == page["header"][1:]
        shown += 1
    assert shown == 2  # 语速 and 停顿 parsed: the run learned the format
    assert any(k.endswith(" · base") for k in view["confusions"]) or \
        json.loads((ws.root / "evals/ev/base/report.json").read_text())["fields"]["valid"] == 0
    # Base vs tuned: the metric rows are `eval compare`'s, with the difference.
    assert view["header"] == ["metric", "base", "a", "Δ (tuned − base)"]  # the run's name labels the tuned model
    rows = {r[0]: r[1:] for r in view["table"]}
    tuned = json.loads((ws.root / "evals/ev/report.json").read_text())
    base = json.loads((ws.root / "evals/ev/base/report.json").read_text())
    b, t, d = rows["format validity"]
    assert (b, t) == (pytest.approx(100 * base["fields"]["format_validity"]),
                      pytest.approx(100 * cli["fields"]["format_validity"]))
    assert d == pytest.approx(t - b) and t > b
    assert rows["samples"][:2] == [6, 6]
    # Forgetting delta: the line `glmtune eval` prints, from the job's report.
    fg = tuned["forgetting"]
    assert view["forgetting"].startswith(f"forgetting check: general accuracy {fg['base_accuracy']:.0%} (base) -> "
                                         f"{fg['tuned_accuracy']:.0%} (tuned), {fg['delta'] * 100:+.1f} points")
    assert [r[0] for r in view["lost"]] == fg["lost"]
    # Compare side by side: the CLI's compare on the page's folder and the hand-run one.
    md, png, cmd = actions.compare_evals(ws, ["ev", "cli_eval"])
    assert md.count("| metric |") == 1 and png.exists() and cmd.startswith("glmtune eval compare")
    fv = next(x for x in md.splitlines() if x.startswith("| format validity |")).split("|")[2:4]
    assert fv[0] == fv[1]  # the page's job and the hand-run CLI agree


@pytest.fixture
def served(trained, serve_process, tmp_path):
    """`glmtune serve --run runs/a --adapter b=runs/b` on a free port, as a user starts it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}
    with serve_process(tmp_path / "serve.log", "--run", trained.runs_dir / "a", "--adapter",
                       f"b={trained.runs_dir / 'b'}", env=env, startup_s=180) as server:
        yield server.url


def converse(engine, questions, stateless=False, max_new_tokens=12):
    """The page's exchange, turn by turn: the last (shown, kept) of each stream_reply is the next history."""
    turns = []
    for q in questions:
        for shown, turns in stream_reply(engine, turns, q, stateless=stateless, max_new_tokens=max_new_tokens):
            pass
    return [m["content"] for m in turns if m["role"] == "assistant"]


def test_chat_endpoint_and_adapters_answer_as_the_runs_own_engine(trained, served):
    from glmtune.inference.engine import HFEngine

    ws = trained
    questions = ["朗读得分3，请评分", "朗读得分5，请评分", "再说一次"]
    own_a, own_b = HFEngine.from_run(ws.runs_dir / "a"), HFEngine.from_run(ws.runs_dir / "b")
    want_a, want_b = converse(own_a, questions), converse(own_b, questions)
    assert want_a[0].startswith("语速:") and want_a != want_b  # a learned the format
    models = ChatModels(ws)
    # A served endpoint: its model names, then a multi-turn chat with each.
    endpoint = models.get(f"endpoint: {served}")
    assert endpoint.models() == ["a", "b"]
    assert converse(models.get(f"endpoint: {served}", endpoint_model="a"), questions) == want_a
    assert converse(models.get(f"endpoint: {served}", endpoint_model="b"), questions) == want_b
    # Several adapters on one base, in the page's own process: runs sharing the base are offered.
    assert adapter_runs(ws, "runs/a") == ["runs/b"]
    both = models.get("run: runs/a", ["runs/b"], pick="b")
    assert models.names() == ["a", "b"] and both.name == "b"
    assert converse(both, questions) == want_b
    assert converse(models.get("run: runs/a", ["runs/b"], pick="a"), questions) == want_a
    # Stateless: each question alone, so the second answer is the one a fresh chat gets.
    alone = converse(own_a, questions, stateless=True)
    assert alone[1] == converse(own_a, questions[1:2])[0]
    assert converse(models.get(f"endpoint: {served}", endpoint_model="a"), questions, stateless=True) == alone
    # An endpoint that is not there: a one-line error for the page, not a hang or a traceback.
    from glmtune.errors import GenerationError

    with pytest.raises(GenerationError, match="endpoint http://127.0.0.1:9/v1"):
        converse(models.get("endpoint: http://127.0.0.1:9/v1", endpoint_model="a"), questions[:1])
