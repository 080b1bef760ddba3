"""The oral-reading recipe's registration: what it plugs into the generic stages (glmtune.registry).

Imports nothing heavy: every hook imports its module when called.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from glmtune.registry import StatsFlag, Task, register_task

NAME = "oral"


def field_spec():
    """The answer line of seed 000: six sub-scores banded 1..5 (完整度 too: the rubric bands it 5/3/1 like the
    others) and a comment; the same contract as answer.py."""
    from glmtune.evaluate.fields import Field, FieldSpec
    from glmtune.tasks.oral_reading.rubric import DIMENSIONS

    bands = tuple(range(1, 6))
    return FieldSpec(NAME, tuple(Field(n, "int", bands) for n in DIMENSIONS) + (Field("评语", "str"),))


def demo_data(out: Path, seed: int) -> dict[str, Path]:
    """The bundled demo set: synthetic ISE records with evidence prompts (demo_data.py)."""
    from glmtune.tasks.oral_reading.demo_data import build_demo_dataset

    return build_demo_dataset(out, seed=seed)


def budget_table(tok, n: int = 240):
    """Token lengths of the bundled oral set in `raw` (the user's format) vs `evidence` prompts."""
    from rich.table import Table

    from glmtune.tasks.oral_reading.build import build_sample
    from glmtune.tasks.oral_reading.demo_data import demo_items, token_budget

    items = demo_items(n, 0)
    b = token_budget(tok, [build_sample(i, "raw", "rubric") for i in items],
                     [build_sample(i, "evidence", "rubric") for i in items])
    table = Table(title=f"oral prompts, {n} samples: raw vs evidence (tokens, {tok.name_or_path.split('/')[-1]})")
    for col in ("mode", "p50", "p90", "max"):
        table.add_column(col, justify="right")
    for mode in ("raw", "evidence"):
        table.add_row(mode, *(str(b[mode][k]) for k in ("p50", "p90", "max")))
    table.caption = f"raw / evidence at p50: {b['ratio_p50']}×"
    return table


def rubric_text() -> str:
    """The rubric system prompt of the user's format: the tiny tokenizer learns it, as a real one knows Chinese."""
    return (resources.files("glmtune") / "assets" / "oral_rubric_zh.txt").read_text("utf-8")


def demo_report(cfg, files, result, console) -> dict:
    from glmtune.tasks.oral_reading.demo_report import report

    return report(cfg, files, result, console)


def web_data_panel(ws, *, data_file) -> None:
    """`glmtune web`'s Data-tab panel: upload ISE results, `oral build` them (web.py)."""
    from glmtune.tasks.oral_reading.web import data_panel

    data_panel(ws, data_file=data_file)


register_task(Task(
    name=NAME,
    summary="oral-reading scoring: iFlytek ISE results -> rubric sub-scores and a comment",
    verb="oral", cli_module="glmtune.tasks.oral_reading.cli",
    default=True, demo_data=demo_data, demo_cache_name="oral-evidence", demo_report=demo_report,
    field_specs={NAME: field_spec}, default_field_spec=NAME,
    metrics={NAME: "metric family 'oral' is scored by `glmtune oral score` (task recipe), not by `glmtune eval`; "
                   "`oral score --baseline` (from `glmtune oral baseline`) puts the metrics-only learner, the bar "
                   "to beat, next to the model"},
    stats_flags=(StatsFlag("--oral-modes", "also compare raw vs evidence oral prompts", budget_table),),
    tokenizer_text=rubric_text,
    web_data_panel=web_data_panel,
))
