"""Task recipes plug in through `glmtune.tasks` only: the generic layers name no task, and a task registered at
runtime contributes its field spec, metric family and `data stats` table like the bundled oral task does."""

import re
from pathlib import Path

import pytest

from glmtune.tasks import TASKS, StatsFlag, Task, register_task, unregister_task

PKG = Path(__file__).resolve().parents[2] / "glmtune"


def test_generic_layers_do_not_name_a_task():
    names = "|".join(sorted({t.name for t in TASKS.values()} | {t.verb for t in TASKS.values() if t.verb}))
    quoted = re.compile(rf"""["']({names})["']|tasks\.oral_reading""")
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        if path.is_relative_to(PKG / "tasks"):
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if quoted.search(line):
                hits.append(f"{path.relative_to(PKG.parent)}:{no}: {line.strip()}")
    assert not hits, "task names outside glmtune/tasks/:\n" + "\n".join(hits)


def test_bundled_task_keeps_the_users_defaults():
    from glmtune.config.load import load_config
    from glmtune.evaluate.fields import FieldSpec

    cfg = load_config(None)
    assert cfg.data.train == "demo" and cfg.eval.field_spec == "oral"
    assert [f.name for f in FieldSpec.load("oral").fields][:2] == ["语速", "停顿"]


@pytest.fixture
def toy_task():
    def spec():
        from glmtune.evaluate.fields import Field, FieldSpec

        return FieldSpec("sentiment", (Field("label", "str", ("pos", "neg")),))

    def table(tok):
        return f"toy table for {type(tok).__name__}"

    register_task(Task(name="toy", summary="toy sentiment", field_specs={"sentiment": spec},
                       metrics={"toy": "metric family 'toy' is scored elsewhere"},
                       stats_flags=(StatsFlag("--toy-table", "a toy table", table),)))
    yield
    unregister_task("toy")


def test_runtime_task_contributes_spec_metric_and_stats_flag(toy_task, tiny_glm4, tmp_path, capsys):
    from glmtune.cli import main
    from glmtune.config.load import load_config
    from glmtune.evaluate.fields import FieldSpec, parse_answer
    from glmtune.evaluate.report import build_report

    spec = FieldSpec.load("sentiment")
    assert parse_answer("label:pos", spec).valid and not parse_answer("label:meh", spec).valid
    cfg = load_config(None, ["eval.metrics=[text,fields,toy]", "eval.field_spec=sentiment"])
    rows = [{"id": "1", "prediction": "label:pos", "reference": "label:pos", "prompt": "x"}]
    report, _ = build_report(rows, field_spec=FieldSpec.load(cfg.eval.field_spec), metrics=cfg.eval.metrics)
    assert report["fields"]["format_validity"] == 1.0
    assert "metric family 'toy' is scored elsewhere" in report["notes"]
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "label:pos"}]}\n')
    assert main(["data", "stats", f"model.path={tiny_glm4}", f"data.train={data}", "--toy-table"]) == 0
    assert "toy table for" in capsys.readouterr().out


def test_runtime_task_plugs_into_the_web_app(tmp_path):
    """`glmtune web` offers a registered task's field spec (and passes it to `glmtune eval`) and draws its
    Data-tab panel, wired to the tab's data-file dropdown; the bundled task's panel is drawn the same way."""
    from glmtune.web import actions
    from glmtune.web.app import build_ui
    from glmtune.web.workspace import Workspace

    got = {}

    def panel(ws, *, data_file):
        import gradio as gr

        got["data_file"] = data_file.elem_id
        gr.Markdown("toy panel", elem_id="toy_panel")

    def spec():
        from glmtune.evaluate.fields import Field, FieldSpec

        return FieldSpec("sentiment", (Field("label", "str", ("pos", "neg")),))

    ws = Workspace(tmp_path / "ws")
    (ws.runs_dir / "r").mkdir()
    (ws.runs_dir / "r" / "method.json").write_text("{}")
    (ws.data_dir / "t.jsonl").write_text("{}\n")
    register_task(Task(name="toy", summary="toy", field_specs={"sentiment": spec}, web_data_panel=panel))
    try:
        choices = actions.field_spec_choices(ws)
        assert "sentiment" in choices and "oral" in choices and "none" in choices
        assert "eval.field_spec=sentiment" in actions.eval_argv(ws, "runs/r", "data/t.jsonl", "e",
                                                                field_spec="sentiment")
        ui = build_ui(ws)
    finally:
        unregister_task("toy")
    ids = {b.elem_id for b in ui.blocks.values()}
    assert {"toy_panel", "oral_build", "oral_src", "oral_result"} <= ids and got["data_file"] == "data_file"
    spec_box = next(b for b in ui.blocks.values() if b.elem_id == "eval_spec")
    assert spec_box.value == "oral"  # the default task's spec, as `eval.field_spec`'s default
    # the default spec adds nothing (the config's default), "none" asks for text metrics only
    assert not [a for a in actions.eval_argv(ws, "runs/r", "data/t.jsonl", "e") if a.startswith("eval.")]
    assert "eval.metrics=[text]" in actions.eval_argv(ws, "runs/r", "data/t.jsonl", "e", field_spec="none")
