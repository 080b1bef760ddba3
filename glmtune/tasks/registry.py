"""The task registry lives in glmtune/registry.py (below every layer, so data, evaluate and the tiny models read
it without importing glmtune.tasks); this module keeps the names importable from here."""

from glmtune.registry import (TASKS, StatsFlag, Task, builtin_field_spec, default_field_spec,  # noqa: F401
                              default_task, demo_files, field_spec_names, register_task, task_metrics, tasks,
                              tokenizer_texts, unregister_task)
