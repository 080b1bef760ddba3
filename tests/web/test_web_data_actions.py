"""The Data tab's actions against the CLI they stand for: `data stats` (table, cutoff line, histogram),
`data render`, `oral build` (counts, errors, the file written). The CLI runs as a subprocess in the workspace
folder with the same relative paths, so its printed lines and the page's must be identical."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glmtune.config.load import ConfigError
from glmtune.tasks.oral_reading.web import oral_build, oral_inputs, save_ise_uploads
from glmtune.web import actions
from glmtune.web.workspace import WebError, Workspace

ROOT = Path(__file__).resolve().parents[2]


def cli(args, cwd, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "dumb", "NO_COLOR": "1"}
    p = subprocess.run([sys.executable, "-m", "glmtune", *args], cwd=cwd, capture_output=True, text=True, env=env,
                       timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def write_varied(path: Path, n: int = 24) -> Path:
    """Conversations of clearly different lengths (some multi-turn), so the histogram has shape."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            msgs = []
            for t in range(1 + i % 3):
                msgs += [{"role": "user", "content": "请问" + "长" * (3 * i + t)},
                         {"role": "assistant", "content": f"答{i}" + "好" * (i % 7)}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def test_stats_histogram_and_cutoff_equal_the_cli(ws):
    write_varied(ws.data_dir / "v.jsonl")
    cutoff = 60
    st = actions.data_stats(ws, "data/v.jsonl", "tiny:glm4", cutoff)
    out = cli(["data", "stats", "data.train=data/v.jsonl", "model.path=tiny:glm4", f"data.cutoff_len={cutoff}"],
              ws.root).stdout
    # The percentile table: the page's rows are the CLI's rows.
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] in ("total", "prompt", "supervised"):
            table[cells[0]] = [float(c) for c in cells[1:]]
    assert {r[0]: [float(x) for x in r[1:]] for r in st["rows"]} == table and len(table) == 3
    # What the cutoff would cut: the same counts as the CLI's line.
    flat = " ".join(out.split())
    m = re.search(r"cutoff_len (\d+): (\d+) samples over \(([\d.]+)%\), holding (\d+) supervised tokens", flat)
    assert m, flat
    assert (st["cut"]["cutoff_len"], st["cut"]["samples_over"], st["cut"]["supervised_tokens_in_over"]) == \
        (cutoff, int(m.group(2)), int(m.group(4)))
    assert 0 < st["cut"]["samples_over"] < 24  # the case is not trivial
    assert m.group(0) in st["line"]
    # The histogram: per-sample lengths equal the ids `data render --json` prints (no cutoff in the way), and
    # its counts are those lengths binned; bins past the cutoff hold the samples over it.
    rendered = cli(["data", "render", "data/v.jsonl", "data.cutoff_len=100000", "--model", "tiny:glm4", "--json"],
                   ws.root).stdout.splitlines()
    lengths = [len(json.loads(x)["input_ids"]) for x in rendered]
    assert st["lengths"] == lengths
    edges = [h[0] for h in st["hist"]] + [st["hist"][-1][1]]
    assert [h[2] for h in st["hist"]] == np.histogram(lengths, bins=edges)[0].tolist()
    assert sum(h[2] for h in st["hist"]) == len(lengths) == 24
    assert sum(1 for n in lengths if n > cutoff) == st["cut"]["samples_over"]
    assert actions.histogram_figure(st).shape[2] == 3


def test_render_is_the_cli_text(ws):
    write_varied(ws.data_dir / "v.jsonl", 4)
    _, text, problems = actions.render_data(ws, "data/v.jsonl", "tiny:glm4", 2048, 2)
    out = cli(["data", "render", "data/v.jsonl", "--model", "tiny:glm4", "--limit", "2"], ws.root).stdout
    assert problems == []
    def words(t):  # line wrapping and the rules' length follow each console's width; the words do not
        return [w for w in t.split() if w.strip("─")]

    assert words(text) == words(out)
    assert "supervised: '\\n答0<|user|>'" in text and text.count("data/v.jsonl:") == 2


def test_oral_build_counts_and_file_equal_the_cli(ws):
    cli(["oral", "synth", "--n", "10", "--out", "syn"], ws.root)
    ise = ws.root / "syn" / "ise.jsonl"
    lines = ise.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "{not json")  # a bad line: counted and named, or stops the build
    ise.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shown, out = oral_build(ws, "syn/ise.jsonl", "oral_web", on_bad_record="skip")
    printed = cli(["oral", "build", "syn/ise.jsonl", "--out", "data/oral_cli.jsonl", "--on-bad-record", "skip"],
                  ws.root).stdout.splitlines()
    assert [s.replace("oral_web", "oral_cli") for s in shown] == printed
    assert shown[0] == "syn/ise.jsonl: 10 read, 0 skipped, 1 failed" and shown[1].strip().startswith("failed  ise.jsonl:4: bad JSON (")
    assert out.read_bytes() == (ws.data_dir / "oral_cli.jsonl").read_bytes()
    assert sum(1 for _ in out.open(encoding="utf-8")) == 10
    # on_bad_record=error: the CLI's one-line error, raised (the page shows it)
    p = cli(["oral", "build", "syn/ise.jsonl", "--out", "data/x.jsonl"], ws.root, check=False)
    with pytest.raises(ConfigError) as err:
        oral_build(ws, "syn/ise.jsonl", "x")
    assert p.returncode == 2 and p.stderr.strip() == f"error: {err.value}"
    assert oral_inputs(ws)[:3] == ["data/oral_cli.jsonl", "data/oral_web.jsonl", "syn/ise.jsonl"]


def test_oral_build_from_uploaded_xml_folder(ws, tmp_path):
    cli(["oral", "synth", "--n", "3", "--out", str(tmp_path / "syn"), "--xml"], ws.root)
    xmls = sorted((tmp_path / "syn" / "xml").glob("*.xml"))
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(WebError, match="ISE results are"):
        save_ise_uploads(ws, [tmp_path / "notes.docx"], "batch1")
    dest = save_ise_uploads(ws, xmls, "batch1")
    assert dest == ws.root / "ise" / "batch1" and "ise/batch1" in oral_inputs(ws)
    with pytest.raises(WebError, match="folder name"):
        save_ise_uploads(ws, xmls, "../up")
    shown, out = oral_build(ws, "ise/batch1", "from_xml")
    assert shown[0] == "ise/batch1: 3 read, 0 skipped, 0 failed"
    assert shown[1] == "wrote 3 samples to data/from_xml.jsonl; skipped 0 without labels"
    with pytest.raises(WebError, match="outside the workspace"):
        oral_build(ws, str(tmp_path / "syn" / "xml"), "escape")


def test_eval_settings_are_checked_before_a_job_starts(ws, tmp_path):
    run = ws.runs_dir / "r"
    run.mkdir()
    (run / "method.json").write_text("{}")
    (ws.data_dir / "t.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="eval.max_new_tokens"):
        actions.start_eval(ws, "runs/r", "data/t.jsonl", "e", extra="eval.max_new_tokens=0")
    with pytest.raises(WebError, match="only eval.key=value"):
        actions.start_eval(ws, "runs/r", "data/t.jsonl", "e", extra="train.lr=1")
    (ws.data_dir / "spec.yaml").write_text("name: x\nfields: []\n")
    with pytest.raises(WebError, match="not a field spec"):
        actions.start_eval(ws, "runs/r", "data/t.jsonl", "e", field_spec="data/spec.yaml")
    assert ws.jobs.list() == []
