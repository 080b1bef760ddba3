"""`glmtune export --run RUN [--out DIR] [--size 2GB] [--dtype bfloat16] [--device cpu] [export.k=v ...]`

Merges the run's adapter into its base, writes safetensors shards of at most `--size` into an atomic
folder, copies tokenizer + chat template + generation config, then verifies merged vs adapter logits.

    glmtune export --run runs/demo --size 2GB --dtype bfloat16
"""

from __future__ import annotations

import argparse

HELP = "Merge a run into a plain model folder (sharded safetensors), verified against the adapter."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder (holds method.json)")
    parser.add_argument("--out", help="export folder (default: export.output_dir or RUN/export)")
    parser.add_argument("--size", help="max shard size, e.g. 2GB (export.size)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="export.dtype")
    parser.add_argument("--device", help="device the merge runs on: cpu, cuda, cuda:1 (export.device)")
    parser.add_argument("--no-verify", action="store_true", help="skip the merged-vs-adapter logits check")
    parser.add_argument("items", nargs="*", metavar="key=value", help="config overrides, e.g. export.tolerance=1e-4")


def run(args) -> int:
    import sys
    from pathlib import Path

    from glmtune.config.load import load_config
    from glmtune.export.merge import ExportError
    from glmtune.export.pipeline import export_run

    run_cfg = Path(args.run) / "config.yaml"
    cfg = load_config(run_cfg if run_cfg.exists() else None, list(args.items)).export
    for key in ("size", "dtype", "device"):
        if getattr(args, key):
            setattr(cfg, key, getattr(args, key))
    if args.no_verify:
        cfg.verify = False
    try:
        result = export_run(args.run, cfg, out_dir=args.out)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.out_dir)
    return 0
