"""The task registry: how a task recipe (glmtune/tasks/<task>/) plugs into the generic stages.

The generic layers (data, evaluate, the tiny models, `glmtune demo`, the verb table) never name a task:
they ask this registry. A task registers one `Task` saying what it contributes:

  * `verb` / `cli_module`: its own `glmtune VERB` (a module with HELP, add_arguments, run);
  * `demo_data`: the bundled data set `data.train=demo` trains on (the task marked `default` provides it);
  * `field_specs`: built-in structured-answer specs, by name, for `eval.field_spec` (evaluate/fields.py);
  * `metrics`: metric families it scores with its own verb, and the note `glmtune eval` writes for them;
  * `stats_flags`: extra `glmtune data stats --FLAG` tables;
  * `tokenizer_text`: text the embedded tiny tokenizer is trained on besides the generic corpus, so its
    prompts tokenize like a real model's would;
  * `demo_report`: what `glmtune demo` shows after training (predictions scored the task's way);
  * `web_data_panel`: its own panel in `glmtune web`'s Data tab, called as `(workspace, data_file=dropdown)`
    inside the tab's gradio context: it lays out its blocks and wires their events, pointing the tab's
    data-file dropdown at a file it writes (the web app draws every registered task's panel, naming none).

Everything is a callable or a module name, so registering a task imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StatsFlag:
    flag: str                 # e.g. "--oral-modes"
    help: str
    table: Callable           # tokenizer -> a rich renderable


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    verb: str | None = None
    cli_module: str | None = None
    default: bool = False     # provides the `demo` data set and `glmtune demo`'s report
    demo_data: Callable[[Path, int], dict[str, Path]] | None = None  # (cache folder, seed) -> {"train", "test"}
    demo_cache_name: str | None = None  # folder name of the built demo data under the cache
    demo_report: Callable | None = None  # (cfg, files, train result, console) -> dict (glmtune/demo.py)
    field_specs: Mapping[str, Callable] = field(default_factory=dict)  # name -> () -> FieldSpec
    default_field_spec: str | None = None  # eval.field_spec when the config leaves it at its default
    metrics: Mapping[str, str] = field(default_factory=dict)  # metric family -> note in the eval report
    stats_flags: tuple[StatsFlag, ...] = ()
    tokenizer_text: Callable[[], str] | None = None
    web_data_panel: Callable | None = None  # (web Workspace, *, data_file=gr.Dropdown) -> None (glmtune/web/app.py)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    if task.default and any(t.default for t in TASKS.values()):
        raise ValueError(f"task {task.name!r}: a default task is registered already")
    taken = {n for t in TASKS.values() for n in t.field_specs}
    if taken & set(task.field_specs):
        raise ValueError(f"task {task.name!r}: field spec(s) {sorted(taken & set(task.field_specs))} taken")
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    TASKS.pop(name, None)


def default_task() -> Task | None:
    return next((t for t in TASKS.values() if t.default), None)


def field_spec_names() -> list[str]:
    return sorted(n for t in TASKS.values() for n in t.field_specs)


def builtin_field_spec(name: str):
    for t in TASKS.values():
        if name in t.field_specs:
            return t.field_specs[name]()
    return None


def default_field_spec() -> str | None:
    task = default_task()
    return task.default_field_spec if task else None


def task_metrics() -> dict[str, str]:
    return {m: note for t in TASKS.values() for m, note in t.metrics.items()}


def demo_files(seed: int = 0) -> dict[str, Path]:
    """The default task's bundled demo set (`data.train=demo`), built once under the cache and reused."""
    from glmtune.models.tiny import cache_root

    task = default_task()
    if task is None or task.demo_data is None:
        raise ValueError("data.train=demo: no registered task provides demo data; give a data file")
    out = cache_root() / "demo-data" / f"{task.demo_cache_name or task.name}-seed{seed}"
    train, test = out / "train.jsonl", out / "test.jsonl"
    if not (train.exists() and test.exists()):
        return task.demo_data(out, seed)
    return {"train": train, "test": test}


def tokenizer_texts() -> list[str]:
    return [t.tokenizer_text() for t in TASKS.values() if t.tokenizer_text is not None]
