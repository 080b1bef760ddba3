"""`glmtune plan [CONFIG] [key=value ...] [--gpu NAME | --gpu-mem 24GB] [--measure] [--out DIR]`."""

from __future__ import annotations

import argparse

HELP = ("Before training: token lengths vs cutoff, steps and warm-up share, memory per method on a GPU, "
        "time, and recommended hyper-parameters with reasons.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glmtune.config.cli import add_config_args

    add_config_args(parser)
    parser.add_argument("--gpu", help="GPU to plan for, e.g. RTX4090-24GB, A100-40GB, H100-80GB, T4-16GB")
    parser.add_argument("--gpu-mem", help="GPU memory instead of a name, e.g. 24GB")
    parser.add_argument("--measure", action="store_true",
                        help="run a few real training steps on this machine and extrapolate the time")
    parser.add_argument("--out", default=None, help="folder for plan.json and lengths.png (default: train.output_dir/plan)")
    parser.add_argument("--json", action="store_true", help="print plan.json instead of tables")


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from glmtune.config.cli import config_from_args
    from glmtune.plan.facts import CloudOnlyModel
    from glmtune.plan.memory import parse_gpu
    from glmtune.plan.report import build_plan, print_plan, write_plan

    cfg = config_from_args(args)
    try:
        gpu = parse_gpu(args.gpu or cfg.plan.gpu, args.gpu_mem or cfg.plan.gpu_mem_gb)
        plan = build_plan(cfg, gpu=gpu, measure=args.measure)
    except CloudOnlyModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(cfg.train.output_dir) / "plan"
    js, png = write_plan(plan, out)
    if args.json:
        print(json.dumps({k: v for k, v in plan.items() if k != "lengths"}, ensure_ascii=False, indent=1))
    else:
        print_plan(plan)
        print(f"wrote {js} and {png}")
    return 1 if any(f["level"] == "fatal" for f in plan["findings"]) else 0
