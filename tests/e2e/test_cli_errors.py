"""Every invalid input the CLI can receive ends in one `error:` line naming the problem, the exit code of its
kind (glmtune/errors.py: 2 for input mistakes) and no traceback (issue 18 point 5). Real CLI, subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def glmtune(*args, cwd):
    return subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A data file, an empty one, a finished run, an unfinished one (config.yaml only) and a YAML config."""
    root = tmp_path_factory.mktemp("cli_errors")
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (root / "empty.jsonl").write_text("", encoding="utf-8")
    p = glmtune("train", "data.train=d.jsonl", "train.output_dir=run", "train.max_steps=1", "data.val_size=0",
                "train.save_steps=100", cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.yaml").write_text((root / "run" / "config.yaml").read_text())
    (root / "cfg.yaml").write_text("train:\n  lr: [1, 2]\n", encoding="utf-8")
    return root


TRAIN = ("train", "data.train=d.jsonl", "train.output_dir=out", "train.max_steps=1", "data.val_size=0")

# (arguments, exit code, text the one error line must hold)
CASES = {
    "unknown method option": (TRAIN + ("method.bogus=1",), 2, "unknown key 'method.bogus'"),
    "unknown top-level key": (TRAIN + ("trian.lr=1",), 2, "unknown key 'trian'"),
    "bad override syntax": (TRAIN + ("train.lr",), 2, "expected section.key=value overrides, got ['train.lr']"),
    "bad YAML in an override": (TRAIN + ("train.lr=[1",), 2, "override 'train.lr=[1': the value is not valid YAML"),
    "bad value type": (TRAIN + ("train.lr=abc",), 2, "train.lr: Input should be a valid number"),
    "bad value type in a file": (("train", "cfg.yaml", "data.train=d.jsonl", "train.output_dir=out"), 2,
                                 "train.lr: Input should be a valid number"),
    "unknown method": (TRAIN + ("method.name=nope",), 2, "method"),
    "freeze of a missing layer": (TRAIN + ("method.name=freeze", "method.trainable_layers=99"), 2,
                                  "method.trainable_layers=99 but the model has 2 layers"),
    "freeze of a missing module": (TRAIN + ("method.name=freeze", "method.trainable_modules=[nope]"), 2,
                                   "method.trainable_modules: no module named 'nope'"),
    "P-Tuning with packing": (TRAIN + ("method.name=ptuning", "train.packing=true"), 2,
                              "train.packing does not work with method.name=ptuning"),
    "missing config file": (("train", "nope.yaml"), 2, "config file not found: nope.yaml"),
    "missing data file": (("train", "data.train=nope.jsonl", "train.output_dir=out"), 2,
                          "data.train: nope.jsonl: file not found"),
    "missing model": (TRAIN + ("model.path=nope",), 2, "model.path 'nope': no config.json there"),
    "unknown tiny model": (TRAIN + ("model.path=tiny:nope",), 2, "unknown tiny model 'nope'"),
    "missing run (predict)": (("predict", "--run", "nope", "--test", "d.jsonl", "--out", "p.jsonl"), 2,
                              "nope is not a finished run folder (no such folder)"),
    "missing test file": (("predict", "--run", "run", "--test", "nope.jsonl", "--out", "p.jsonl"), 2,
                          "nope.jsonl: data file not found"),
    "empty test file (predict)": (("predict", "--run", "run", "--test", "empty.jsonl", "--out", "p.jsonl"), 2,
                                  "empty.jsonl: no usable test samples"),
    "empty test file (eval)": (("eval", "--run", "run", "--test", "empty.jsonl"), 2,
                               "empty.jsonl: no usable test samples"),
    "unfinished run (predict)": (("predict", "--run", "unfinished", "--test", "d.jsonl", "--out", "p.jsonl"), 2,
                                 "unfinished is not a finished run folder: training did not finish"),
    "unfinished run (eval)": (("eval", "--run", "unfinished", "--test", "d.jsonl"), 2,
                              "unfinished is not a finished run folder"),
    "unfinished run (export)": (("export", "--run", "unfinished"), 2, "unfinished is not a finished run folder"),
    "unfinished run (chat)": (("chat", "--run", "unfinished"), 2, "unfinished is not a finished run folder"),
    "unfinished run (serve)": (("serve", "--run", "unfinished"), 2, "unfinished is not a finished run folder"),
    "two sources (eval)": (("eval", "--run", "run", "--model-dir", "tiny:glm4", "--test", "d.jsonl"), 2,
                           "give exactly one of --run RUN, --model-dir DIR, --endpoint URL"),
    "missing eval report": (("eval", "compare", "nope"), 2, "nope: no report.json there"),
    "bad --adapter (serve)": (("serve", "--run", "run", "--adapter", "bad"), 2,
                              "--adapter 'bad': expected NAME=RUN_OR_ADAPTER_DIR"),
    "--merged without a format": (("export", "--merged", "run"), 2, "--merged needs --format gguf"),
    "bad export size": (("export", "--run", "run", "export.size=huge"), 2, "export.size"),
    "a run folder as --model (data render)": (("data", "render", "d.jsonl", "--model", "run"), 2,
                                              "model.path 'run': no config.json there"),
    "a run folder as --model (serve)": (("serve", "--model", "run"), 2, "model.path 'run': no config.json there"),
    "missing field spec": (("eval", "--run", "run", "--test", "d.jsonl", "eval.metrics=[fields]",
                            "eval.field_spec=nope.yaml"), 2, "field spec 'nope.yaml'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_its_exit_code(work, case):
    args, code, text = CASES[case]
    p = glmtune(*args, cwd=work)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], p.stderr[-3000:]
    assert errors[0] == p.stderr.strip().splitlines()[-1]  # the last word; nothing (no hint block) after it
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert not (work / "out").exists()  # a refused train writes no run folder
