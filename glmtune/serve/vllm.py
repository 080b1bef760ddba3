"""`glmtune serve --backend vllm`: the scale-out path. Launches vLLM's own OpenAI server on an
exported (merged) folder; glmtune's HF backend stays the portable path (CPU, remote-code ChatGLM,
many adapters on one base without vLLM's LoRA support, vllm#6148).

vLLM is GPU-only and pins its own torch, so it lives in its own environment:
    python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm
    glmtune export --run runs/demo --dtype bfloat16
    glmtune serve --backend vllm --model runs/demo/export serve.port=8000
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def vllm_command(model_dir: Path, cfg, adapters: dict[str, str] | None = None, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", model_dir.name if model_dir.name != "export" else model_dir.parent.name,
           "--host", cfg.host, "--port", str(cfg.port), "--max-num-seqs", str(cfg.max_batch_size),
           "--max-model-len", str(cfg.max_prompt_tokens + cfg.max_new_tokens)]
    if cfg.api_key:
        cmd += ["--api-key", cfg.api_key]
    if adapters:
        cmd += ["--enable-lora", "--lora-modules", *[f"{k}={v}" for k, v in adapters.items()]]
    return cmd


def export_dir_for(run: str | None, model: str | None) -> Path:
    if model:
        return Path(model)
    folder = Path(run) / "export"
    if not (folder / "verify.json").exists():
        raise SystemExit(f"vLLM serves merged weights: run `glmtune export --run {run}` first (no {folder}/verify.json)")
    return folder


def launch(run: str | None, model: str | None, cfg, adapters: dict[str, str] | None = None) -> int:
    if importlib.util.find_spec("vllm") is None:
        print("error: --backend vllm needs the `vllm` package, which is GPU-only (CUDA) and pins its own torch. "
              "Install it in a separate environment (see `glmtune/serve/vllm.py`), or use the default "
              "--backend hf, which batches requests on CPU and GPU.", file=sys.stderr)
        return 2
    cmd = vllm_command(export_dir_for(run, model), cfg, adapters)
    print(" ".join(cmd), file=sys.stderr)
    os.execv(cmd[0], cmd)  # vLLM owns the process from here (signals, workers)
    return 0
