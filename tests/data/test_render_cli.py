"""`glmtune data render`: the exact ids and labels training uses, per sample (the real CLI, real tokenizer files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CASES = {c["name"]: c for c in json.loads((ASSETS / "official_ids" / "cases.json").read_text("utf-8"))["cases"]}
pytestmark = pytest.mark.slow  # each test runs the CLI (a few seconds per call)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}


def glmtune(*args):
    return subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def official(fam, name):
    return next(c for c in json.loads((ASSETS / "official_ids" / f"{fam}.json").read_text("utf-8"))["cases"]
                if c["name"] == name)


def write(path, names, extra=()):
    lines = [json.dumps({"messages": CASES[n]["messages"]}, ensure_ascii=False) for n in names] + list(extra)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_json_output_is_the_official_ids_and_labels(tmp_path):
    f = write(tmp_path / "d.jsonl", ["seed_oral_grading", "multi_turn_history"])
    p = glmtune("data", "render", f, "--model", ASSETS / "real" / "glm-4-9b-chat", "--json")
    assert p.returncode == 0, p.stderr
    got = [json.loads(x) for x in p.stdout.splitlines()]
    assert [g["line"] for g in got] == [1, 2]
    for g, name in zip(got, ["seed_oral_grading", "multi_turn_history"]):
        want = official("glm4", name)
        assert (g["input_ids"], g["labels"]) == (want["input_ids"], want["labels"])
    assert "native fast tokenizer" in p.stderr  # the one-line note


def test_terminal_output_shows_ids_text_and_supervised_part_and_counts_bad_records(tmp_path):
    f = write(tmp_path / "d.jsonl", ["single_turn"], ['{"messages": [{"role": "user", "content": "x"}]}'])
    p = glmtune("data", "render", f, "--model", ASSETS / "real" / "chatglm3-6b")
    assert p.returncode == 1  # a bad record is an error, after the good ones are shown
    want = official("chatglm3", "single_turn")
    sup = sum(1 for x in want["labels"] if x != -100)
    assert f"{f}:1 · {len(want['input_ids'])} tokens · {sup} supervised" in p.stdout
    assert " ".join(map(str, want["input_ids"])) in " ".join(p.stdout.split())
    assert "你好！有什么可以帮你的吗？" in p.stdout
    assert f"{f}:2: messages: no assistant turn to learn from" in p.stderr


def test_chatglm6b_history_needs_last_turn_and_then_matches_ptuning_main(tmp_path):
    f = write(tmp_path / "d.jsonl", ["multi_turn_history"])
    model = ASSETS / "real" / "chatglm-6b"
    p = glmtune("data", "render", f, "--model", model, "--json")
    assert p.returncode == 2 and "data.loss_on=last_turn" in p.stderr and "Traceback" not in p.stderr
    p = glmtune("data", "render", f, "data.loss_on=last_turn", "--model", model, "--json")
    got = json.loads(p.stdout)
    want = official("chatglm6b", "multi_turn_history")
    assert (got["input_ids"], got["labels"]) == (want["input_ids"], want["labels"])
