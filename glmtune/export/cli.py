"""`glmtune export --run RUN [--out DIR] [--size 2GB] [--dtype bfloat16] [--device cpu] [export.k=v ...]`

Merges the run's adapter into its base, writes safetensors shards of at most `--size` into an atomic
folder, copies tokenizer + chat template + generation config, then verifies merged vs adapter logits.

    glmtune export --run runs/demo --size 2GB --dtype bfloat16
    glmtune export --run runs/demo --format gguf --quant f16,q8_0,q4_k_m   # llama.cpp / Ollama (export/gguf.py)
    glmtune export --merged runs/demo/export --format gguf --quant q8_0
"""

from __future__ import annotations

import argparse

HELP = ("Merge a run into a plain model folder (sharded safetensors), or write GGUF files for llama.cpp / "
        "Ollama (--format gguf); each verified against the model it came from.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (holds method.json)")
    src.add_argument("--merged", help="an already merged model folder (config.json + safetensors), "
                     "for --format gguf or --quant bnb4|bnb8")
    src.add_argument("--estimate", metavar="MODEL", help="print the size on disk of each GGUF type for a model "
                     "the planner knows (e.g. glm-4-9b-chat-hf), computed from its shapes; writes nothing")
    parser.add_argument("--format", choices=["hf", "gguf"], default="hf",
                        help="hf: safetensors folder (transformers, vLLM); gguf: llama.cpp / Ollama files")
    parser.add_argument("--quant", help="gguf types, comma-separated: f32,f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m "
                        "(default f16); hf: bnb4 or bnb8 (a bitsandbytes-quantised folder)")
    parser.add_argument("--system", help="gguf: default system prompt written into the Ollama Modelfile")
    parser.add_argument("--no-modelfile", action="store_true", help="gguf: do not write an Ollama Modelfile")
    parser.add_argument("--out", help="export folder (default: export.output_dir or RUN/export; "
                        "RUN/export-gguf, RUN/export-bnb4 ...)")
    parser.add_argument("--size", help="max shard size, e.g. 2GB (export.size)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="export.dtype")
    parser.add_argument("--device", help="device the merge runs on: cpu, cuda, cuda:1 (export.device)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip verification (merged vs adapter; GGUF and bnb vs the merged model)")
    from glmtune.config.cli import add_config_args

    add_config_args(parser)


# flags that name an export key: the run's config.yaml < config file < overrides < these
FLAGS = {"size": "export.size", "dtype": "export.dtype", "device": "export.device",
         "no_verify": ("export.verify", lambda v: False if v else None)}


def export_config(args):
    from glmtune.config.cli import config_from_args

    return config_from_args(args, FLAGS).export


def run(args) -> int:
    """Errors (glmtune.errors.GlmtuneError) reach cli.main: ExportError exits 2, ExportFailure
    (verification, llama.cpp) 1."""
    from glmtune.errors import InputError
    from glmtune.export.pipeline import export_run

    if args.estimate:
        return _estimate(args.estimate)
    if args.format == "gguf":
        return _run_gguf(args)
    if args.quant:
        return _run_bnb(args)
    if args.merged:
        raise InputError("--merged needs --format gguf or --quant bnb4|bnb8 (a merged folder already is the hf format)")
    cfg = export_config(args)
    result = export_run(args.run, cfg, out_dir=args.out)
    print(result.out_dir)
    return 0


def _run_bnb(args) -> int:
    from glmtune.export.bnb import export_bnb

    cfg = export_config(args)
    out = export_bnb(args.run or args.merged, args.quant.strip().lower(), out_dir=args.out, cfg=cfg,
                     verify=cfg.verify)
    print(out)
    return 0


def _run_gguf(args) -> int:
    from glmtune.export.gguf import export_gguf

    cfg = export_config(args)
    result = export_gguf(args.run or args.merged, args.quant, out_dir=args.out, cfg=cfg,
                         verify=cfg.verify, modelfile=not args.no_modelfile, system=args.system)
    print(result.out_dir)
    return 0


def _estimate(model: str) -> int:
    from glmtune.export.gguf import BITS_PER_WEIGHT, size_estimates

    sizes = size_estimates(model)
    print(f"{model}: size on disk per GGUF type (parameters x llama.cpp's measured bits per weight)")
    for q, b in sizes.items():
        print(f"  {q:7s} {BITS_PER_WEIGHT[q]:7.4f} bpw  {b / 1e9:6.2f} GB")
    return 0
