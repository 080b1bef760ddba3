"""Runs inside vLLM's own environment (`glmtune serve --backend vllm` execs it with that python; glmtune is
not installed there, so this file imports nothing from glmtune): checks what vLLM can only tell about
itself, then hands the process to vLLM's OpenAI server with the same arguments.

Check: when LoRA adapters are served, the architecture must support LoRA in this vLLM (not every one
does, vllm#6148); if not, one line names the route that works instead of a worker traceback.
"""

import os
import sys

# Run by path, this file's folder leads sys.path, where glmtune's own `vllm.py` would shadow the vllm package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]


def lora_problem(architectures: list[str]) -> str | None:
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    for arch in architectures:
        cls = ModelRegistry._try_load_model_cls(arch)  # None: not a native vLLM model (Transformers backend)
        if cls is not None and not supports_lora(cls):
            return f"vLLM has no LoRA support for {arch}"
    return None


def main() -> None:
    archs = [a for a in os.environ.pop("GLMTUNE_VLLM_LORA_ARCH", "").split(",") if a]
    route = os.environ.pop("GLMTUNE_VLLM_EXPORT_ROUTE", "export the run and serve the merged folder")
    if archs:
        problem = lora_problem(archs)
        if problem:
            import vllm

            print(f"error: {problem} (vllm {vllm.__version__}): {route}", file=sys.stderr)
            sys.exit(2)
    from vllm.entrypoints.launchers.api_server.entry import main as serve

    sys.argv = ["vllm-api-server", *sys.argv[1:]]
    serve()


if __name__ == "__main__":  # vLLM starts worker processes that import __main__: nothing may run on import
    main()
