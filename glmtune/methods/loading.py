"""The base model loaded the way a method trains it: shared by `glmtune train` and `glmtune plan --measure`
(so it sits in methods/, below both; also importable from glmtune.train.trainer)."""

from __future__ import annotations


def mixed_half(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def load_for_training(cfg):
    """Tokenizer + base model loaded the way the method needs (dtype, quantisation)."""
    from glmtune.methods import get
    from glmtune.models.load import load, resolve_path, route_family

    method = get(cfg.method.name)
    family = route_family(resolve_path(cfg.model.path))
    model_cfg = cfg.model
    half = mixed_half(cfg.train.precision)
    if model_cfg.dtype == "auto" and half is not None and method.freezes_base:
        # Frozen base weights can live in half precision; trainable ones are upcast to fp32 below.
        model_cfg = model_cfg.model_copy(update={"dtype": "bfloat16" if cfg.train.precision == "bf16" else "float16"})
    return method, load(model_cfg, cfg.train.precision, quantization_config=method.quantization(cfg.method, cfg.train),
                        config_overrides=method.config_overrides(cfg.method, family))
