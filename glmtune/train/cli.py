"""`glmtune train [CONFIG] [key=value ...] [--nproc N ...]` — fine-tune; writes the run folder.

    glmtune train configs/tiny_demo.yaml train.max_steps=50
    glmtune train configs/glm4_9b/lora.yaml --nproc 8            # torchrun, one process per GPU
"""

from __future__ import annotations

import argparse

from glmtune.config.cli import add_config_args, config_from_args

HELP = "Fine-tune a model (lora, qlora, ptuning, freeze, full) on a chat JSONL; writes a run folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    g = parser.add_argument_group("many processes (torchrun)")
    g.add_argument("--nproc", type=int, default=None, help="processes per node (usually GPUs per node)")
    g.add_argument("--nnodes", type=int, default=None, help="number of machines")
    g.add_argument("--node-rank", type=int, default=None, help="this machine's rank (0..nnodes-1)")
    g.add_argument("--master-addr", default=None, help="address of node 0")
    g.add_argument("--master-port", type=int, default=None, help="port on node 0")


def run(args) -> int:
    from glmtune.train.trainer import check_inputs

    cfg = config_from_args(args)
    check_inputs(cfg)  # missing files, a bad model path: one line, before anything is written or launched
    if args.nproc or args.nnodes:
        from glmtune.train.launch import relaunch

        return relaunch(args, cfg)
    from glmtune.train.trainer import train

    result = train(cfg)  # DataError, PreflightError, ResumeError, ...: GlmtuneErrors, one line in cli.main
    s = result.summary
    if s:
        print(f"run folder: {result.run_dir}")
        if s.get("loss_first") is None:  # the run ended before its first logging step
            loss = f"loss not logged (train.logging_steps {cfg.train.logging_steps} > {s['steps']} steps)"
        else:
            loss = f"loss {s['loss_first']:.4f} -> {s['loss_last']:.4f}"
        print(f"steps {s['steps']}, {loss}, {s['tokens_per_s']} tokens/s, {s['wall_s']} s")
    return 0
