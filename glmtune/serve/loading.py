"""Build what the server, chat and web chat serve: one base model plus named LoRA adapters.

`--run RUN` serves that run (its adapter becomes the default model); `--model DIR` serves a plain or
exported folder. Each `--adapter name=PATH` (a run folder or a PEFT adapter folder trained on the
same base) is loaded with PEFT `load_adapter`, and requests pick it by `model` name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glmtune.errors import InputError
from glmtune.inference.batching import BASE
from glmtune.run.folder import Run, is_finished


@dataclass
class Served:
    engine: object  # HFEngine
    default: str  # public name of the default model
    names: dict[str, str | None] = field(default_factory=dict)  # public name -> PEFT adapter name / BASE / None

    def resolve(self, model: str | None) -> str | None:
        """Public model name -> adapter to run with. Raises KeyError for unknown names."""
        if not model or model == "default":
            model = self.default
        return self.names[model]


def _adapter_dir(path: Path) -> tuple[Path, str | None]:
    """A run folder or an adapter folder -> (adapter folder, base path recorded by the run or None)."""
    if is_finished(path):
        run = Run.open(path)
        if not run.is_adapter:
            raise InputError(f"--adapter {path}: method {run.method!r} trained full weights, not an adapter; "
                             f"serve it on its own with --run")
        return run.artifact, run.base
    if (path / "adapter_config.json").exists():
        return path, None
    raise InputError(f"--adapter {path}: neither a run folder (method.json) nor an adapter (adapter_config.json)")


def load_served(run: str | None = None, model: str | None = None, adapters: dict[str, str] | None = None,
                name: str | None = None, packed_linear: bool = False) -> Served:
    from glmtune.models.load import resolve_path
    from glmtune.inference.engine import HFEngine

    if bool(run) == bool(model):
        raise InputError("give exactly one of --run RUN or --model DIR")
    if run:
        opened = Run.open(run)
        engine = HFEngine.from_run(opened, name=name)
        base = str(opened.base_path)
    else:
        engine = HFEngine.from_model_dir(model, name=name)
        base = str(resolve_path(model))
    # A run trained with an adapter is a PeftModel whose adapter is called "default".
    default_adapter = "default" if hasattr(engine.model, "peft_config") else None
    served = Served(engine, engine.name, {engine.name: default_adapter})
    for public, path in (adapters or {}).items():
        if public in served.names or public == "default":
            raise InputError(f"--adapter {public}: that model name is already taken")
        adir, adapter_base = _adapter_dir(Path(path))
        if adapter_base and str(resolve_path(adapter_base)) != base:
            raise InputError(f"--adapter {public}={path} was trained on {adapter_base}, not on the served base {base}")
        if hasattr(engine.model, "peft_config"):
            engine.model.load_adapter(str(adir), adapter_name=public)
        else:
            from peft import PeftModel

            engine.model = PeftModel.from_pretrained(engine.model, str(adir), adapter_name=public).eval()
        served.names[public] = public
        from glmtune.methods.ptuning import converted_chatglm, official_prefix_positions

        if converted_chatglm(base) and any(c.is_prompt_learning for c in engine.model.peft_config.values()):
            official_prefix_positions(engine.model)  # ChatGLM's numbering behind a P-Tuning prefix
    if hasattr(engine.model, "peft_config") and served.names[engine.name] is None:
        served.names[engine.name] = BASE  # the plain base, with adapters switched off
    if packed_linear:  # last: after everything that may touch the weights (adapters, prefix positions)
        from glmtune.inference.packed import apply_packed_linear

        print(apply_packed_linear(engine.model), flush=True)
    return served
