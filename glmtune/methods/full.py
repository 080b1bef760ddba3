"""Full fine-tuning: every weight trains; the run folder's `model/` is a complete checkpoint.

Memory: weights + grads + two AdamW moments = 16 bytes per parameter in fp32 (about 150 GB for a 9B
model), so on GLM-4-9B this needs ZeRO-3/FSDP sharding or `train.precision=pure_bf16` (8 bytes per
parameter). `glmtune plan` prints the estimate before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from glmtune.config.base import Section
from glmtune.errors import InputError, MissingFileError
from glmtune.methods.base import Method, register


class FullConfig(Section):
    name: Literal["full"] = "full"


def copy_tensors(model, tensors: dict, source: str) -> set[str]:
    """Copy named tensors into `model` in place (cast to each parameter's dtype); returns the names copied."""
    import torch

    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in params:
                raise InputError(f"{source}: tensor {name!r} has no counterpart in {type(model).__name__}")
            params[name].copy_(tensor.to(params[name].dtype))
    return set(tensors)


def load_weights_into_partial(model, file: Path) -> set[str]:
    from safetensors.torch import load_file

    return copy_tensors(model, load_file(str(file)), Path(file).name)


def load_weights_into(model, folder: Path) -> None:
    """Copy the tensors of every `*.safetensors` file in `folder` into `model`; every parameter must be filled."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise MissingFileError(f"{folder}: no *.safetensors weights to load")
    seen: set[str] = set()
    for f in files:
        seen |= load_weights_into_partial(model, f)
    params = dict(model.named_parameters())
    # Tied weights (lm_head = embed_tokens) are saved once; they were filled through their twin.
    ptrs = {params[n].data_ptr() for n in seen if n in params}
    missing = sorted(n for n, p in params.items() if n not in seen and p.data_ptr() not in ptrs)
    if missing:
        raise InputError(f"{folder}: weights missing for {missing[:5]} ({len(missing)} in all)")


@register
class FullMethod(Method):
    name: ClassVar[str] = "full"
    config_cls: ClassVar[type[Section]] = FullConfig
    artifact: ClassVar[str] = "model"
    freezes_base: ClassVar[bool] = False
    label: ClassVar[str] = "full fine-tuning"
    lr_range: ClassVar[tuple[float, float, float]] = (1e-5, 1e-5, 2e-5)  # LLaMA-Factory full-SFT examples 1e-5
    updates_base_weights: ClassVar[bool] = True
    trains_all_weights: ClassVar[bool] = True

    def trainable_params(self, facts, st) -> int:
        return facts.param_count()

    def epochs(self, base: int) -> tuple[int, str]:
        return max(2, base - 2), "full/freeze update many weights: fewer passes before over-fitting and forgetting"

    def prepare(self, loaded, cfg, train_cfg):
        for p in loaded.model.parameters():
            p.requires_grad_(True)
        return loaded.model

    def save_trained(self, model, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        load_weights_into(loaded.model, trained_dir)
        return loaded.model

    def merge(self, model):
        return model  # already plain weights
