"""The plug-in registries: tasks (task recipes, glmtune/tasks/<task>/) and fine-tuning methods (glmtune/methods/).

This module sits at the bottom of the import graph (it imports only glmtune.utils), so every layer can ask it
which tasks and methods exist without importing them: config validates `method` with a registered method's
config class, data builds the default task's demo set, evaluate looks up field specs and metric notes, the tiny
tokenizer adds each task's text. The plug-ins import the generic layers and register themselves here; the
bundled ones (the packages glmtune.methods and glmtune.tasks) are imported by name the first time a registry
is read, the way a plug-in package is loaded, so reading a registry always sees them (and nothing below them
has to import them).

Tasks: a task registers one `Task` saying what it contributes:

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

Methods: `glmtune.methods.base.register` fills `METHODS` (name -> Method instance); `methods()` and
`default_method()` read it with the built-in methods loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.utils.io import cache_root

# The bundled plug-in packages, imported by name on the first read of their registry (importing one registers
# everything in it). A package being imported is in sys.modules already, so a read during its import is safe.
BUILTIN = {"tasks": "glmtune.tasks", "methods": "glmtune.methods"}


def _load_builtin(kind: str) -> None:
    importlib.import_module(BUILTIN[kind])


# ------------------------------------------------------------------------------------------------ methods
METHODS: dict = {}  # name -> glmtune.methods.base.Method instance, filled by glmtune.methods.base.register


def methods() -> dict:
    """All registered methods, the built-in ones (glmtune.methods) loaded first."""
    _load_builtin("methods")
    return METHODS


def default_method() -> str:
    return next(name for name, m in methods().items() if m.default)


# -------------------------------------------------------------------------------------------------- tasks
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


TASKS: dict[str, Task] = {}  # filled by register_task; read it through tasks() so the bundled ones are in


def tasks() -> dict[str, Task]:
    """All registered tasks, the bundled ones (glmtune.tasks) loaded first."""
    _load_builtin("tasks")
    return TASKS


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
    return next((t for t in tasks().values() if t.default), None)


def field_spec_names() -> list[str]:
    return sorted(n for t in tasks().values() for n in t.field_specs)


def builtin_field_spec(name: str):
    for t in tasks().values():
        if name in t.field_specs:
            return t.field_specs[name]()
    return None


def default_field_spec() -> str | None:
    task = default_task()
    return task.default_field_spec if task else None


def task_metrics() -> dict[str, str]:
    return {m: note for t in tasks().values() for m, note in t.metrics.items()}


def demo_files(seed: int = 0) -> dict[str, Path]:
    """The default task's bundled demo set (`data.train=demo`), built once under the cache and reused."""
    task = default_task()
    if task is None or task.demo_data is None:
        raise ValueError("data.train=demo: no registered task provides demo data; give a data file")
    out = cache_root() / "demo-data" / f"{task.demo_cache_name or task.name}-seed{seed}"
    train, test = out / "train.jsonl", out / "test.jsonl"
    if not (train.exists() and test.exists()):
        return task.demo_data(out, seed)
    return {"train": train, "test": test}


def tokenizer_texts() -> list[str]:
    return [t.tokenizer_text() for t in tasks().values() if t.tokenizer_text is not None]
