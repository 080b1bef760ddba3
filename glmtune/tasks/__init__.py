"""Task recipes: data, answer format, metrics and demo of one job, plugged into the generic stages through
`glmtune.registry` (see docs/architecture.md). Importing this package registers the bundled tasks."""

from glmtune.registry import (TASKS, StatsFlag, Task, builtin_field_spec, default_field_spec, default_task,
                              demo_files, field_spec_names, register_task, task_metrics, tokenizer_texts,
                              unregister_task)
from glmtune.tasks.oral_reading import task as _oral_reading  # noqa: E402,F401  (registers the oral task)

__all__ = ["TASKS", "StatsFlag", "Task", "builtin_field_spec", "default_field_spec", "default_task", "demo_files",
           "field_spec_names", "register_task", "task_metrics", "tokenizer_texts", "unregister_task"]
