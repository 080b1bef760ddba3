"""`glmtune convert SRC DST`: a ChatGLM2/ChatGLM3/glm-4-9b-chat remote-code folder -> a native Glm folder; a
ChatGLM-6B(-INT4/-INT8) folder -> glmtune's native ChatGLM-6B class (dequantized)."""

from __future__ import annotations

import sys

HELP = ("convert a remote-code ChatGLM2/3 or glm-4-9b-chat checkpoint folder to transformers' native Glm, or a "
        "ChatGLM-6B(-INT4/-INT8) one to glmtune's native ChatGLM-6B class")


def add_arguments(p) -> None:
    p.add_argument("src", help="checkpoint folder with config.json (model_type chatglm) and its weight files")
    p.add_argument("dst", help="output folder (created; must be empty or absent)")
    p.add_argument("--max-shard", default="2GB", help="largest output shard, e.g. 500MB, 2GB (default 2GB)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast floating-point weights (default: keep the checkpoint's dtype)")


def run(args) -> int:
    from pathlib import Path

    from glmtune.models.convert import ConvertError, convert

    src, dst = Path(args.src), Path(args.dst)
    if not (src / "config.json").exists():
        raise ConvertError(f"{src}: no config.json there")
    if dst.exists() and any(dst.iterdir()):
        raise ConvertError(f"{dst}: exists and is not empty; give a new folder")
    res = convert(src, dst, max_shard=args.max_shard, dtype=args.dtype)
    print(res.note(src), file=sys.stderr)
    print(dst)
    return 0
