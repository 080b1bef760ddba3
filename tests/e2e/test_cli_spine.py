"""The real CLI on the tiny model: data check -> train -> predict, asserting exit codes and run-folder contents."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def glmtune(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True, env=ENV,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"glmtune {args} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def rows(n, start=0):
    out = []
    for i in range(start, start + n):
        a = i % 5 + 1
        out.append({"id": f"s{i}", "messages": [{"role": "system", "content": "你是老师"},
                                                {"role": "user", "content": f"语速{a}"},
                                                {"role": "assistant", "content": f"语速:{a};评语:好"}]})
    return out


def write(path, items):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in items),
                    encoding="utf-8")
    return path


def test_data_check_lists_every_problem_and_fails(tmp_path):
    f = write(tmp_path / "d.jsonl", rows(2) + ["{oops", {"messages": [{"role": "user", "content": "x"}]}])
    p = glmtune("data", "check", f, check=False)
    assert p.returncode == 1
    assert f"{f}:3: <json>: bad JSON" in p.stdout
    assert f"{f}:4: messages: no assistant turn to learn from" in p.stdout
    assert "2 good record(s), 2 problem(s)" in p.stdout
    good = write(tmp_path / "g.jsonl", rows(3))
    assert glmtune("data", "check", good).returncode == 0


def test_train_refuses_bad_data_unless_told_to_skip(tmp_path):
    f = write(tmp_path / "d.jsonl", rows(12) + ["{oops"])
    p = glmtune("train", f"data.train={f}", f"train.output_dir={tmp_path / 'r'}", "train.max_steps=1", check=False)
    assert p.returncode == 2 and f"{f}:13: <json>: bad JSON" in p.stderr


@pytest.mark.slow
def test_train_then_predict_end_to_end(tmp_path):
    train = write(tmp_path / "train.jsonl", rows(24) + ["{oops"])
    test = write(tmp_path / "test.jsonl", rows(4, start=100))
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={train}", f"train.output_dir={run}", "data.on_bad_record=skip",
                "data.val_size=0", "train.max_steps=6", "train.batch_size=4", "train.lr=5e-3", "train.save_steps=3")
    assert "1 bad skipped" in p.stdout and "run folder:" in p.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["data"]["bad_records_skipped"] == 1
    skips = [json.loads(x) for x in (run / "skips.jsonl").read_text().splitlines()]
    assert skips[0]["kind"] == "bad_record" and skips[0]["source"].endswith(":25")
    preds = tmp_path / "preds.jsonl"
    p = glmtune("predict", "--run", run, "--test", test, "--out", preds, "--max-new-tokens", "8")
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    assert sorted(r["id"] for r in got) == ["s100", "s101", "s102", "s103"]
    assert all(isinstance(r["prediction"], str) for r in got)
    # rerun resumes: nothing generated twice
    p = glmtune("predict", "--run", run, "--test", test, "--out", preds, "--max-new-tokens", "8")
    assert "4 already there, 0 new" in p.stdout
