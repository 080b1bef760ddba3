"""glmtune.run: the one module that writes and reads a run folder (issue 18 point 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtune.errors import GlmtuneError
from glmtune.run.folder import CONFIG, METHOD, Run, RunFolderError, as_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from glmtune.config import load_config
    from glmtune.train.trainer import train

    root = tmp_path_factory.mktemp("run_folder")
    data = root / "d.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                        {"role": "assistant", "content": f"a{i}"}]})
                              for i in range(8)) + "\n", encoding="utf-8")
    out = root / "run"
    train(load_config(None, [f"data.train={data}", f"train.output_dir={out}", "train.max_steps=2", "data.val_size=0",
                             "train.resume=never", "train.save_steps=1000", "method.rank=4"]), quiet=True)
    return out


def test_training_writes_what_run_open_reads(run_dir):
    run = Run.open(run_dir)
    base = json.loads((run_dir / METHOD).read_text())["base"]
    assert (run.method, run.artifact_name, run.base) == ("lora", "adapter", base)
    assert run.is_adapter and not run.full_weights and run.artifact == run_dir / "adapter"
    assert run.tokenizer_dir == run_dir / "tokenizer" and run.chat_template_sha256
    assert run.config.method.name == "lora" and run.config.method.rank == 4
    assert as_run(run) is run and as_run(run_dir).meta == run.meta


@pytest.mark.parametrize("case, message", [
    ("missing", r"x is not a finished run folder \(no such folder\)"),
    ("file", r"x is not a finished run folder \(it is a file\)"),
    ("empty", r"x is not a finished run folder \(no method.json\); train first"),
    ("started", r"x is not a finished run folder: training did not finish \(config.yaml but no method.json\)"),
    ("bad_json", r"x/method.json: unreadable \(JSONDecodeError"),
    ("not_object", r"x/method.json: expected a JSON object, got list"),
    ("no_base", r"x/method.json: field 'base' missing or not a string"),
])
def test_not_a_finished_run_folder_is_one_error(tmp_path, monkeypatch, case, message):
    monkeypatch.chdir(tmp_path)
    x = Path("x")
    if case == "file":
        x.write_text("")
    elif case != "missing":
        x.mkdir()
    if case == "started":
        (x / CONFIG).write_text("{}")
    body = {"bad_json": "{oops", "not_object": "[]", "no_base": json.dumps({"method": "lora", "artifact": "adapter"})}
    if case in body:
        (x / METHOD).write_text(body[case])
    with pytest.raises(RunFolderError, match=message) as err:
        Run.open(x)
    assert isinstance(err.value, GlmtuneError) and err.value.exit_code == 2 and "\n" not in str(err.value)


def test_moved_base_is_named(run_dir, tmp_path):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    meta = json.loads((moved / METHOD).read_text())
    (moved / METHOD).write_text(json.dumps({**meta, "base": str(tmp_path / "gone")}))
    with pytest.raises(RunFolderError, match=r"its base model is not there any more: model.path .*gone"):
        Run.open(moved).base_path


def _count_reads(monkeypatch) -> dict[str, int]:
    """Reads of method.json / config.yaml through Path.read_text (how glmtune reads both)."""
    counts = {METHOD: 0, CONFIG: 0}
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name in counts:
            counts[self.name] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return counts


def test_export_reads_method_json_and_config_once(run_dir, tmp_path, monkeypatch):
    """Before the run module, one verified export read method.json three times and config.yaml twice."""
    from glmtune.export.config import ExportSection
    from glmtune.export.pipeline import export_run

    counts = _count_reads(monkeypatch)
    result = export_run(run_dir, ExportSection(), out_dir=tmp_path / "export", log=lambda *_: None)
    assert result.verify["passed"]
    assert counts == {METHOD: 1, CONFIG: 1}


def test_engine_from_run_reads_each_file_once(run_dir, monkeypatch):
    from glmtune.inference.engine import HFEngine

    counts = _count_reads(monkeypatch)
    engine = HFEngine.from_run(run_dir)
    assert engine.name == "run" and hasattr(engine.model, "peft_config")
    assert counts == {METHOD: 1, CONFIG: 1}
