"""Freeze tuning: train the last N decoder layers and/or named modules; everything else stays frozen.

Only the trained tensors are saved (`model/trained.safetensors` + `trained.json` listing them), so a
freeze run of GLM-4-9B with 2 layers writes ~0.9 GB rather than 18 GB; `load_trained` copies them onto a
fresh base. Decoder layers are found generically: the longest `nn.ModuleList` whose name ends in `layers`
(`model.layers` in GLM/GLM-4/Llama/Qwen, `transformer.encoder.layers` in remote-code ChatGLM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from glmtune.config.base import Section
from glmtune.errors import MethodError
from glmtune.methods.base import Method, register


class FreezeConfig(Section):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=0, description="Train the last N decoder layers in full (0 = none).")
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Also train modules with these names: a dotted path (model.norm, lm_head) or a last "
        "component matched anywhere (mlp = every layer's MLP, embed_tokens).",
    )

    @model_validator(mode="after")
    def _something_trains(self):
        if self.trainable_layers == 0 and not self.trainable_modules:
            raise ValueError("freeze: set method.trainable_layers > 0 or list method.trainable_modules")
        return self


def decoder_layers(model):
    """(dotted name, ModuleList) of the model's decoder layers."""
    import torch

    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and (n == "layers" or n.endswith(".layers"))]
    if not found:
        raise MethodError(f"{type(model).__name__}: no `layers` ModuleList found; use method.trainable_modules")
    return max(found, key=lambda nm: len(nm[1]))


def trainable_module_names(model, cfg: FreezeConfig) -> list[str]:
    """Dotted names of the modules `cfg` trains (each module trains with all its parameters)."""
    names: list[str] = []
    if cfg.trainable_layers:
        prefix, layers = decoder_layers(model)
        if cfg.trainable_layers > len(layers):
            raise MethodError(f"method.trainable_layers={cfg.trainable_layers} but the model has {len(layers)} layers")
        names += [f"{prefix}.{i}" for i in range(len(layers) - cfg.trainable_layers, len(layers))]
    all_modules = [n for n, _ in model.named_modules() if n]
    for want in cfg.trainable_modules:
        hits = [n for n in all_modules if n == want or n.endswith("." + want)]
        if not hits:
            top = sorted({n.split(".")[0] for n in all_modules})
            raise MethodError(f"method.trainable_modules: no module named {want!r}; top-level modules: {top}")
        names += hits
    return names


def apply_freeze(model, cfg: FreezeConfig) -> list[str]:
    """Freeze everything, then unfreeze the chosen modules. Returns the trainable parameter names."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in trainable_module_names(model, cfg):
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


@register
class FreezeMethod(Method):
    name: ClassVar[str] = "freeze"
    config_cls: ClassVar[type[Section]] = FreezeConfig
    artifact: ClassVar[str] = "model"
    # Frozen weights could live in half precision, but then trained (fp32) and frozen (half) layers would
    # mix dtypes outside autocast (generation after training); we keep one dtype and let autocast do mixed.
    freezes_base: ClassVar[bool] = False
    label: ClassVar[str] = "freeze tuning"
    lr_range: ClassVar[tuple[float, float, float]] = (2e-5, 5e-5, 1e-4)  # between full's and LoRA's
    updates_base_weights: ClassVar[bool] = True

    def memory_setup(self, cfg) -> dict:
        return {"freeze_layers": cfg.trainable_layers}

    def trainable_params(self, facts, st) -> int:
        return min(st.freeze_layers, facts.layers) * facts.layer_params()

    def gradient_layers(self, facts, st) -> int:
        return min(st.freeze_layers, facts.layers)

    def epochs(self, base: int) -> tuple[int, str]:
        return max(2, base - 2), "full/freeze update many weights: fewer passes before over-fitting and forgetting"

    def prepare(self, loaded, cfg, train_cfg):
        apply_freeze(loaded.model, cfg)
        if train_cfg.gradient_checkpointing:
            # Frozen embeddings give inputs without grad; checkpointed layers would then get no grads.
            loaded.model.enable_input_require_grads()
        return loaded.model

    def save_trained(self, model, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out_dir / "trained.safetensors"))
        (out_dir / "trained.json").write_text(json.dumps({"method": "freeze", "tensors": sorted(tensors)}, indent=1))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        from glmtune.methods.full import load_weights_into_partial

        load_weights_into_partial(loaded.model, Path(trained_dir) / "trained.safetensors")
        return loaded.model

    def merge(self, model):
        return model  # trained layers are already in place
