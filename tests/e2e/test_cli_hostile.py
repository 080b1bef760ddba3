"""Hostile input through the real CLI (issue 19 rows 1-10): `glmtune data check` and `glmtune train` print one
line per problem (file:line), never a traceback, exit non-zero, and a failed train writes nothing."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def glmtune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, cwd=cwd)


def rec(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"语速{i % 5}"}, {"role": "assistant", "content": f"语速:{i % 5}"}]}


def enc(r) -> bytes:
    return json.dumps(r, ensure_ascii=False).encode("utf-8")


def no_traceback(p):
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]


# line -> expected `file:line: ...` text; the valid records around them must all be read
HOSTILE = {
    3: (json.dumps(rec(0), ensure_ascii=False).encode("gbk"), "not UTF-8 (looks like GBK?)"),
    5: (enc({"messages": [{"role": ["user"], "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "messages[0].role: role must be a string, got list"),
    7: (b"[" * 100_000 + b"]" * 100_000, "<json>: bad JSON: nested too deeply"),
    9: (b'{"messages": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "y"}]}',
        "messages[0].content: lone surrogate '\\ud800' at character 1: not valid Unicode text"),
    14: (b"{oops", "<json>: bad JSON"),  # after the U+2028/U+2029/U+0085 records: line numbers still right
}
SEPARATED = {11: "\u2028", 12: "\u2029", 13: "\u0085"}


@pytest.fixture
def hostile(tmp_path):
    lines = []
    for n in range(1, 31):
        if n in HOSTILE:
            lines.append(HOSTILE[n][0])
        elif n in SEPARATED:
            sep = SEPARATED[n]
            lines.append(enc({"messages": [{"role": "user", "content": f"a{sep}b"},
                                           {"role": "assistant", "content": f"c{sep}d"}]}))
        else:
            lines.append(enc(rec(n)))
    f = tmp_path / "hostile.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    return f


def test_data_check_reports_every_hostile_line_and_reads_the_rest(hostile):
    p = glmtune("data", "check", hostile)
    no_traceback(p)
    assert p.returncode == 1
    for n, (_, msg) in HOSTILE.items():
        assert f"{hostile}:{n}: {msg}" in p.stdout, (n, p.stdout)
    assert f"{hostile}: 25 good record(s), 5 problem(s)" in p.stdout


def test_train_stops_on_the_hostile_lines_before_writing_anything(hostile, tmp_path):
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={hostile}", f"train.output_dir={run}", "train.max_steps=1")
    no_traceback(p)
    assert p.returncode == 2
    assert "error: 5 bad record(s):" in p.stderr
    for n, (_, msg) in HOSTILE.items():
        assert f"{hostile}:{n}: {msg}" in p.stderr
    assert not run.exists()


@pytest.mark.slow
def test_train_skips_and_counts_the_hostile_lines(hostile, tmp_path):
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={hostile}", f"train.output_dir={run}", "data.on_bad_record=skip",
                "data.val_size=0", "train.max_steps=1", "train.batch_size=2")
    no_traceback(p)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "samples: 25 used of 30 read; 5 bad skipped" in p.stdout
    report = json.loads((run / "data_report.json").read_text())
    assert report["bad_records_skipped"] == 5 and report["train"] == 25
    skipped = sorted(int(json.loads(x)["source"].rsplit(":", 1)[1])
                     for x in (run / "skips.jsonl").read_text().splitlines())
    assert skipped == sorted(HOSTILE)


@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_empty_file_fails_both_commands(tmp_path, content):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(content)
    p = glmtune("data", "check", f)
    no_traceback(p)
    assert p.returncode == 1 and f"{f}: no records (the file is empty or blank)" in p.stdout
    run = tmp_path / "run"
    for skip in ("error", "skip"):
        p = glmtune("train", f"data.train={f}", f"train.output_dir={run}", f"data.on_bad_record={skip}")
        no_traceback(p)
        assert p.returncode == 2 and p.stderr.strip().endswith(f"error: {f}: no records (the file is empty or blank)")
        assert not run.exists()


def test_yaml_syntax_error_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  path: tiny:glm4\ntrain:\n  lr: 1e-4\n   epochs: 1\n", encoding="utf-8")
    for verb in (["train"], ["config", "validate"], ["data", "stats"]):
        p = glmtune(*verb, cfg)
        no_traceback(p)
        assert p.returncode == 2
        assert p.stderr.strip() == f"error: {cfg}:5:10: YAML syntax error: mapping values are not allowed here"


def test_non_finite_config_values_are_refused(tmp_path):
    run = tmp_path / "run"
    p = glmtune("train", "train.lr=inf", f"train.output_dir={run}")
    no_traceback(p)
    assert p.returncode == 2 and "train.lr: Input should be a finite number" in p.stderr and not run.exists()


@pytest.mark.slow
def test_huge_learning_rate_diverges_with_the_step_named_and_nothing_saved(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"\n".join(enc(rec(i)) for i in range(16)) + b"\n")
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={data}", f"train.output_dir={run}", "train.lr=1e4", "train.max_steps=12",
                "data.val_size=0", "train.batch_size=4", "train.save_steps=100")
    no_traceback(p)
    assert p.returncode == 2
    assert "error: training diverged at step " in p.stderr and "the loss is nan (not finite)" in p.stderr
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()
    assert "run folder:" not in p.stdout


def _one_line_cases(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(enc(rec(i)) for i in range(8)) + b"\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    return good, {
        "missing data file": ([f"data.train={tmp_path / 'nope.jsonl'}"], f"data.train: {tmp_path / 'nope.jsonl'}: file not found"),
        "data.train is a folder": ([f"data.train={tmp_path / 'adir'}"], f"data.train: {tmp_path / 'adir'}: is a folder"),
        "missing validation file": ([f"data.validation={tmp_path / 'v.jsonl'}"], "data.validation: "),
        "missing model path": ([f"model.path={tmp_path / 'nomodel'}"], "model.path "),
        "unknown tiny model": (["model.path=tiny:nosuch"], "model.path 'tiny:nosuch': unknown tiny model 'nosuch'"),
        "output_dir is a file": ([f"train.output_dir={tmp_path / 'afile'}"], "train.output_dir: "),
        "output_dir below a file": ([f"train.output_dir={tmp_path / 'afile' / 'run'}"], "cannot be created"),
        "missing resume checkpoint": ([f"train.resume={tmp_path / 'ckpt'}"], "train.resume: checkpoint folder"),
    }


CASES = ["missing data file", "data.train is a folder", "missing validation file", "missing model path",
         "unknown tiny model", "output_dir is a file", "output_dir below a file", "missing resume checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_bad_paths_are_one_line_errors_before_anything_is_written(tmp_path, case):
    good, cases = _one_line_cases(tmp_path)
    overrides, expected = cases[case]
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={good}", f"train.output_dir={run}", *overrides)
    no_traceback(p)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], p.stderr
    assert not run.exists()


def test_data_check_on_a_missing_file_or_folder_checks_the_others(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_bytes(enc(rec(1)) + b"\n")
    p = glmtune("data", "check", tmp_path / "nope.jsonl", tmp_path, good)
    no_traceback(p)
    assert p.returncode == 1
    assert f"{tmp_path / 'nope.jsonl'}: data file not found" in p.stdout
    assert f"{tmp_path}: is a folder, not a data file" in p.stdout
    assert f"{good}: 1 good record(s), 0 problem(s)" in p.stdout


@pytest.mark.slow
def test_train_truncates_and_counts_a_10000_message_conversation(tmp_path):
    """Row 6: before, 500 turns took 170 s and 10,000 never finished; the 600 s subprocess timeout is a hang
    guard, not a measurement (benchmarks/long_conversation.py times it)."""
    msgs = [{"role": "system", "content": "你是老师"}]
    for i in range(5000):
        msgs += [{"role": "user", "content": f"第{i}题"}, {"role": "assistant", "content": f"答{i}"}]
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"\n".join([enc({"messages": msgs})] + [enc(rec(i)) for i in range(7)]) + b"\n")
    p = glmtune("data", "check", data)
    assert p.returncode == 0 and "8 good record(s), 0 problem(s)" in p.stdout
    run = tmp_path / "run"
    p = glmtune("train", f"data.train={data}", f"train.output_dir={run}", "data.cutoff_len=512", "data.val_size=0",
                "train.max_steps=1", "train.batch_size=8", "plan.strict=false")
    no_traceback(p)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((run / "data_report.json").read_text())
    assert report["truncated"] == 1 and report["samples_used"] == 8
    skip = json.loads((run / "skips.jsonl").read_text().splitlines()[0])
    assert skip["kind"] == "truncated" and skip["source"] == f"{data}:1"
    assert skip["tokens_before"] > 50_000 and skip["tokens_after"] <= 512
    assert 4900 < skip["turns_lost"] < 5000 and skip["supervised_lost"] > 10_000
