"""P-Tuning v2 (Liu et al. 2021, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally
Across Scales and Tasks"): learned key/value prefixes on every attention layer, base frozen.

The mechanism is picked here from the model family, and nowhere else:

* native models (GLM, GLM-4(-hf), Llama, Qwen, anything generic): PEFT `PrefixTuningConfig`, which feeds
  the prefix as a pre-filled KV cache. With transformers 5 that is a `DynamicCache`; generation with the
  cache gives the same greedy tokens as full re-computation without it (tests/methods/test_ptuning.py).
  This is the model-agnostic route: the official scripts tie P-Tuning v2 to ChatGLM's remote code.
* ChatGLM2/ChatGLM3/glm-4-9b-chat checkpoints, which glmtune converts to native `Glm` (models/convert.py), take
  the PEFT route too, with the prefix encoder shaped as the official demos' `PrefixEncoder` (ChatGLM3
  `modeling_chatglm.py`, used by `finetune_demo` with `pre_seq_len`): without projection one embedding
  [pre_seq_len, layers*2*kv_heads*head_dim] (that is PEFT's own layout, so the flattened prefix is the same
  tensor); with `prefix_projection` an embedding of that full width -> Linear(width, hidden_size) -> tanh ->
  Linear(hidden_size, width). See `official_prefix_encoder`. The real tokens' positions are numbered from 0 behind
  the prefix as in ChatGLM (`official_prefix_positions`), so an official ChatGLM3 prefix gives the original
  code's logits (tests/methods/test_ptuning_chatglm.py).
* remote-code ChatGLM-6B (and any ChatGLM the loader keeps on its remote code) (`family.prefix_mechanism == "pre_seq_len"`): the model's
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
        512, ge=1, description="Hidden size of that MLP (PEFT models; ChatGLM2/3 and glm-4-9b-chat, converted or "
        "remote-code, use the model's hidden_size as the official demos do, unless this is set)."
    )


def remote_prefix(family) -> bool:
    return family.prefix_mechanism == "pre_seq_len"


def _remote_prefix_encoder(model):
    try:
        return model.get_submodule("transformer.prefix_encoder")
    except AttributeError:
        raise MethodError(f"{type(model).__name__}: no transformer.prefix_encoder; was pre_seq_len set in the "
                         "model config before loading? (config_overrides)") from None


def converted_chatglm(path) -> bool:
    """True for a ChatGLM2/3 or glm-4-9b-chat checkpoint that loads as native Glm: a folder glmtune converted
    (its note file), or a remote-code folder the loader converts on the fly."""
    if path is None:
        return False
    from glmtune.models.convert import NOTE_FILE, why_not_convertible

    path = Path(path)
    if (path / NOTE_FILE).exists():
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "chatglm" and \
            why_not_convertible(path) is None
    except (OSError, ValueError):
        return False


def official_prefix_positions(peft_model) -> None:
    """Number the real tokens' rotary positions from 0 behind the prefix, as ChatGLM's own P-Tuning does.

    ChatGLM3's `get_position_ids` counts a prompt from 0 whatever `pre_seq_len` is; PEFT (training) and the
    batching engine (serving) count it after the P virtual tokens, and the prefix keys are never rotated, so the
    two give different logits (max |dlogit| 0.27 and 1.57 on the tests' fixtures). Rotating every prefix key by
    position P makes them equal: RoPE scores depend only on the rotation difference, and
    (R_{m+P} q) . (R_P k) = (R_m q) . k. Done on `get_prompt`, which both PEFT's forward and the batching engine
    call, so training, predict, chat and serve all see the official numbering. Idempotent.
    """
    if getattr(peft_model, "_glmtune_official_positions", False):
        return
    import torch
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    rotary = peft_model.get_base_model().model.rotary_emb
    base_get_prompt = peft_model.get_prompt

    def get_prompt(*args, **kwargs):
        cache = base_get_prompt(*args, **kwargs)
        layers = cache.layers
        keys = layers[0].keys
        n_virtual = keys.shape[2]
        pos = torch.full((1, n_virtual), n_virtual, device=keys.device, dtype=torch.long)
        cos, sin = rotary(keys, pos)
        for layer in layers:
            layer.keys = apply_rotary_pos_emb(layer.keys, layer.keys, cos.to(layer.keys.dtype),
                                              sin.to(layer.keys.dtype))[1]
        return cache

    peft_model.get_prompt = get_prompt
    peft_model._glmtune_official_positions = True


def official_prefix_encoder(peft_model, hidden_size: int) -> None:
    """Give a PEFT prefix encoder (prefix_projection=True) the official ChatGLM shape: Embedding(P, W) ->
    Linear(W, hidden_size) -> tanh -> Linear(hidden_size, W), W = layers * 2 * kv_heads * head_dim (ChatGLM3's
    `PrefixEncoder`). PEFT's own is Embedding(P, W / (2 * layers)) -> Linear(., encoder_hidden) -> tanh -> Linear(., W).
    PEFT's forward, save (the flattened [P, W] prefix, `prompt_embeddings`) and load work unchanged: they only
    call `embedding` and `transform` and read the output width W. Written here because PEFT has no option for it.
    """
    import torch

    for name, enc in peft_model.prompt_encoder.items():
        if not getattr(enc, "prefix_projection", False) or not hasattr(enc, "transform"):
            continue
        width = enc.transform[-1].out_features
        dtype = enc.embedding.weight.dtype
        device = enc.embedding.weight.device
        enc.embedding = torch.nn.Embedding(peft_model.peft_config[name].num_virtual_tokens, width,
                                           device=device, dtype=dtype)
        enc.transform = torch.nn.Sequential(torch.nn.Linear(width, hidden_size, device=device, dtype=dtype),
                                            torch.nn.Tanh(),
                                            torch.nn.Linear(hidden_size, width, device=device, dtype=dtype))
        enc._load_adapter_state_dict = _refuse_flat_prefix


def _refuse_flat_prefix(state_dict) -> None:
    """A saved PEFT prefix is the MLP's output; loading it into a training projection encoder (a Trainer resume)
    would pass it through the MLP a second time. PEFT's own encoder fails on the shape; this one fits, so say it."""
    from glmtune.errors import ResumeError

    raise ResumeError("method ptuning with prefix_projection=true: a checkpoint keeps only the projected prefix, not "
                      "the MLP, so training cannot resume from it; start again with train.resume=never (or train "
                      "with prefix_projection=false, whose checkpoints resume)")


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
    label: ClassVar[str] = "P-Tuning v2"
    lr_range: ClassVar[tuple[float, float, float]] = (5e-3, 2e-2, 3e-2)  # ChatGLM-6B ptuning/train.sh: LR=2e-2
    is_prefix: ClassVar[bool] = True

    def memory_setup(self, cfg) -> dict:
        return {"prefix_tokens": cfg.pre_seq_len}

    def trainable_params(self, facts, st) -> int:
        return st.prefix_tokens * facts.layers * 2 * facts.kv_dim

    def epochs(self, base: int) -> tuple[int, str]:
        return base * 2, "P-Tuning v2 learns only prefixes and converges slower (ChatGLM-6B ran 3000 steps)"

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

        official = converted_chatglm(getattr(loaded, "path", None))
        hidden = cfg.prefix_hidden
        if official and "prefix_hidden" not in cfg.model_fields_set:
            hidden = model.config.hidden_size  # the official ChatGLM prefix MLP width
        peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.pre_seq_len,
                                      prefix_projection=cfg.prefix_projection, encoder_hidden_size=hidden)
        model = get_peft_model(model, peft_cfg)
        if official:
            if cfg.prefix_projection:
                official_prefix_encoder(model, hidden)
            official_prefix_positions(model)
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

            model = load_adapter(loaded.model, trained_dir)
            if converted_chatglm(getattr(loaded, "path", None)):
                official_prefix_positions(model)
            return model
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
