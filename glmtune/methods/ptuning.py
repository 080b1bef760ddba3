"""P-Tuning v2 (Liu et al. 2021, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks"): learned key/value prefixes on every attention layer, base frozen.

The mechanism is picked here from the model family, and nowhere else:

* native models (GLM, GLM-4(-hf), Llama, Qwen, anything generic): PEFT `PrefixTuningConfig`, which feeds
  the prefix as a pre-filled KV cache. With transformers 5 that is a `DynamicCache`; generation with the
  cache gives the same greedy tokens as full re-computation without it (tests/methods/test_ptuning.py).
  This is the model-agnostic route the peers lack (PEERS.md pain points 2-3).
* remote-code ChatGLM-6B / ChatGLM2 / ChatGLM3 (`family.prefix_mechanism == "pre_seq_len"`): the model's
  own `transformer.prefix_encoder`, switched on by `pre_seq_len`/`prefix_projection` in its config before
  the model is built (`config_overrides`); only that encoder trains, as in THUDM's `ptuning/main.py`.

Both save the prefix settings next to the weights, so loading never depends on a matching command line
(ChatGLM-6B#806: trained with pre_seq_len 8, loaded with 128). Not mergeable: see MERGE_REASON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from glmtune.config.base import Section
from glmtune.errors import MethodError
from glmtune.methods.base import Method, register

MERGE_REASON = (
    "P-Tuning v2 adds learned key/value positions in front of every attention layer; no change to the "
    "existing weights reproduces extra attended positions, so there is nothing to merge. Serve or evaluate "
    "the run folder (base + prefix) instead of an exported model."
)
PREFIX_FILE = "prefix_encoder.safetensors"
PREFIX_META = "ptuning.json"


class PtuningConfig(Section):
    name: Literal["ptuning"] = "ptuning"
    pre_seq_len: int = Field(128, ge=1, description="Number of virtual prefix tokens per layer (num_virtual_tokens).")
    prefix_projection: bool = Field(
        False, description="Produce the prefix through a 2-layer MLP (reparameterisation, P-Tuning v2 §3) "
        "instead of learning it directly; helps some tasks, costs more parameters."
    )
    prefix_hidden: int = Field(
        512, ge=1, description="Hidden size of that MLP (PEFT models; remote-code ChatGLM uses its hidden_size)."
    )


def remote_prefix(family) -> bool:
    return family.prefix_mechanism == "pre_seq_len"


def _remote_prefix_encoder(model):
    try:
        return model.get_submodule("transformer.prefix_encoder")
    except AttributeError:
        raise MethodError(f"{type(model).__name__}: no transformer.prefix_encoder; was pre_seq_len set in the "
                         "model config before loading? (config_overrides)") from None


def checkpoint_safe_prefix(peft_model) -> None:
    """Let PEFT prefix tuning train under gradient checkpointing (on in every shipped 6B/9B config).

    transformers' checkpointed decoder layers drop `past_key_values` (the causal mask, built outside them,
    still counts the prefix: a shape error), and keeping it is unsafe as is: the layer appends its keys to the
    cache, so the recomputation in backward would append them twice. In training, the prefix cache is made
    *replayable*: a layer returns prefix + new keys without storing them, so forward and recomputation see the
    same tensors; the layers are then allowed to keep it. Eval and generation (model.eval()) keep PEFT's own
    growing cache.
    """
    from transformers.cache_utils import DynamicLayer

    class ReplayablePrefixLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    base_get_prompt = peft_model.get_prompt

    def get_prompt(*args, **kwargs):
        cache = base_get_prompt(*args, **kwargs)
        if peft_model.training:
            for layer in cache.layers:
                if type(layer) is not DynamicLayer:
                    raise MethodError(f"method ptuning with train.gradient_checkpointing: unsupported cache layer "
                                     f"{type(layer).__name__} (sliding-window model?); set "
                                     "train.gradient_checkpointing=false")
                layer.__class__ = ReplayablePrefixLayer  # same state, non-mutating update
        return cache

    peft_model.get_prompt = get_prompt
    for module in peft_model.get_base_model().modules():
        if hasattr(module, "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True


@register
class PtuningMethod(Method):
    name: ClassVar[str] = "ptuning"
    config_cls: ClassVar[type[Section]] = PtuningConfig
    artifact: ClassVar[str] = "adapter"
    freezes_base: ClassVar[bool] = True
    merge_unsupported_reason: ClassVar[str | None] = MERGE_REASON

    def config_overrides(self, cfg, family) -> dict:
        if remote_prefix(family):
            return {"pre_seq_len": cfg.pre_seq_len, "prefix_projection": cfg.prefix_projection}
        return {}

    def prepare(self, loaded, cfg, train_cfg):
        if getattr(train_cfg, "packing", False):
            # Packed rows rely on position-id boundaries, which transformers only honours without a KV cache;
            # the prefix *is* a KV cache, so samples would attend to each other.
            raise MethodError("train.packing does not work with method.name=ptuning (the prefix is a KV cache and "
                             "packed samples would see each other); set train.packing=false")
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(False)
        if remote_prefix(loaded.family):
            enc = _remote_prefix_encoder(model)
            enc.float()  # the prefix trains in fp32 even on a half base (as THUDM's ChatGLM3 finetune demo)
            for p in enc.parameters():
                p.requires_grad_(True)
            return model
        from peft import PrefixTuningConfig, get_peft_model

        peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.pre_seq_len,
                                      prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.prefix_hidden)
        model = get_peft_model(model, peft_cfg)
        if train_cfg.precision == "pure_bf16":
            model.prompt_encoder.to(model.get_base_model().dtype)  # PEFT builds the prefix in fp32 otherwise
        if train_cfg.gradient_checkpointing:
            checkpoint_safe_prefix(model)
        return model

    def save_trained(self, model, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(out_dir))
            return
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        enc = _remote_prefix_encoder(model)
        save_file({k: v.detach().contiguous().cpu() for k, v in enc.state_dict().items()}, str(out_dir / PREFIX_FILE))
        (out_dir / PREFIX_META).write_text(json.dumps({
            "mechanism": "pre_seq_len", "pre_seq_len": model.config.pre_seq_len,
            "prefix_projection": bool(getattr(model.config, "prefix_projection", False)),
        }, indent=1))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        trained_dir = Path(trained_dir)
        if not (trained_dir / PREFIX_META).exists():
            from glmtune.methods.lora import load_adapter  # a PEFT adapter folder, whatever its type

            return load_adapter(loaded.model, trained_dir)
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        meta = json.loads((trained_dir / PREFIX_META).read_text())
        model = loaded.model
        if getattr(model.config, "pre_seq_len", None) != meta["pre_seq_len"] or \
                bool(getattr(model.config, "prefix_projection", False)) != meta["prefix_projection"]:
            # The prefix encoder is built in __init__ from the config: rebuild the model with the saved settings.
            model = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=model.dtype, trust_remote_code=True,
                                                         pre_seq_len=meta["pre_seq_len"],
                                                         prefix_projection=meta["prefix_projection"])
            loaded.model = model
        enc = _remote_prefix_encoder(model)
        enc.float()
        enc.load_state_dict(load_file(str(trained_dir / PREFIX_FILE)))
        return model.eval()

    def merge(self, model):
        return None
