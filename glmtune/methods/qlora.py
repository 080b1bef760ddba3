"""QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"): a frozen 4-bit
(NF4/FP4, optional double quantisation of the block scales) or 8-bit bitsandbytes base + LoRA adapters.

Two facts this module handles that a plain `get_peft_model` on a bnb model gets wrong on CPU:

* **Train → eval → train (bitsandbytes ≥ 0.48 on CPUs with AVX512-BF16).** In eval mode, a
  `Linear4bit.forward` without grad rewrites its weight *in place* into a CPU-inference layout
  (`_convert_weight_packed_for_cpu`: nibbles re-tiled, block scales dequantised, transposed and rounded
  to bf16, `quant_state.nested` dropped). Nothing converts it back when training resumes, and in train
  mode `matmul_4bit` then takes the inference-only `gemv_4bit` path, which autograd does not track:
  with a bias it raises "a view of a leaf Variable that requires grad is being used in an in-place
  operation" (`result += bias`), without one the base path silently loses its gradient. bnb's own
  inverse (`_convert_weight_packed_for_cpu_inverse`, used when saving) does not undo the transpose for
  non-nested scales, so a save after eval corrupts the weights (max |ΔW| ≈ 2.5 on a 128×256 NF4 layer).
  Fix: every model this method builds keeps the standard layout (`keep_standard_4bit_layout`): eval and
  generation then dequantise per call like on GPU; slower on such CPUs, but correct.
* **Merging.** PEFT's `merge_and_unload` on a 4-bit layer re-quantises W + BA, which throws most of the
  adapter away again. `merge` here dequantises the base once (fp32) and adds the exact LoRA (or DoRA)
  delta, returning a *new plain* transformers model; the export stage casts it to its dtype.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from glmtune.methods.base import Method, register
from glmtune.methods.lora import (LoraConfig, load_adapter, lora_activation_elems, lora_memory_setup,
                                  lora_trainable_params, loraplus_groups, wrap_with_lora)


class QloraConfig(LoraConfig):
    """LoRA's fields (inherited as data only) plus how the frozen base is quantised."""

    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="Quantise the base to 4 bits (QLoRA) or 8 bits (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is the QLoRA paper's.")
    double_quant: bool = Field(True, description="Quantise the block scales too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the dequantised matmul; auto = bf16 for bf16/pure_bf16, fp16 for fp16, else fp32."
    )


def compute_dtype(cfg: QloraConfig, precision: str | None, fallback=None):
    import torch

    if cfg.compute_dtype != "auto":
        return getattr(torch, cfg.compute_dtype)
    if precision is None:
        return fallback or torch.float32
    return {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def bnb_config(cfg: QloraConfig, dtype):
    from transformers import BitsAndBytesConfig

    if cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                              bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype)


def keep_standard_4bit_layout(model) -> int:
    """Stop bnb from re-packing 4-bit weights in place on eval (see the module docstring). Returns layers set."""
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            if getattr(m.weight.quant_state, "packing_format_for_cpu", False):
                raise RuntimeError(f"{type(m).__name__}: weight already in bnb's CPU-inference layout; "
                                   "apply keep_standard_4bit_layout before the first eval forward")
            m.support_avx512bf16_for_cpu = False  # the only switch bnb reads before converting
            n += 1
    return n


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _dequantized(layer):
    """fp32 weight of a plain, 4-bit or 8-bit linear layer."""
    import torch
    from peft.utils.integrations import dequantize_bnb_weight

    w = layer.weight
    if w.__class__.__name__ in ("Params4bit", "Int8Params"):
        return dequantize_bnb_weight(w, state=getattr(layer, "state", None)).to(torch.float32)
    return w.detach().to(torch.float32)


def merge_dequantized(peft_model):
    """A new plain model: dequantised base weights + each LoRA layer's delta (DoRA rescaled), in fp32."""
    import torch
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    state: dict[str, torch.Tensor] = {}
    lora_layers = {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer) or ".lora_" in f".{name}" or "lora_magnitude_vector" in name:
            continue
        for pname, p in mod.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            state[key.replace(".base_layer.", ".")] = _dequantized(mod) if pname == "weight" else p.detach().float()
    for name, layer in lora_layers.items():
        w = state[f"{name}.weight"]
        if adapter not in layer.lora_A:
            continue
        delta = layer.get_delta_weight(adapter).to(torch.float32)
        if layer.use_dora.get(adapter, False):
            # DoRA (Liu et al. 2024): W' = m * (W + ΔW) / ||W + ΔW|| with the norm over the input dim per row.
            merged = w + delta
            mag = layer.lora_magnitude_vector[adapter].weight.detach().float()
            state[f"{name}.weight"] = merged * (mag / merged.norm(p=2, dim=1)).view(-1, 1)
        else:
            state[f"{name}.weight"] = w + delta
    config = copy.deepcopy(base.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             trust_remote_code=bool(getattr(config, "auto_map", None)))
    missing, unexpected = plain.load_state_dict(state, strict=False)
    filled = {p.data_ptr() for k, p in plain.state_dict().items() if k not in missing}
    tied = {n for n in missing if plain.get_parameter(n).data_ptr() in filled}  # e.g. lm_head = embed_tokens
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"qlora merge: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    return plain.eval()


@register
class QloraMethod(Method):
    name: ClassVar[str] = "qlora"
    config_cls: ClassVar[type] = QloraConfig
    artifact: ClassVar[str] = "adapter"
    freezes_base: ClassVar[bool] = True
    label: ClassVar[str] = "QLoRA 4-bit"
    lr_range: ClassVar[tuple[float, float, float]] = (1e-4, 2e-4, 5e-4)  # LoRA's (the QLoRA paper used 1e-4...2e-4)
    quantizes_base: ClassVar[bool] = True
    compute_factor: ClassVar[float] = 1.3  # every matmul dequantises the NF4 weight (Dettmers et al. 2023 report ~)
    early_stop_on_small_data: ClassVar[bool] = True

    def memory_setup(self, cfg) -> dict:
        return lora_memory_setup(cfg)

    def trainable_params(self, facts, st) -> int:
        return lora_trainable_params(facts, st)

    def extra_activation_elems(self, facts, st) -> float:
        return lora_activation_elems(facts, st)

    def frozen_weight_bytes(self, facts, st, n_train: int) -> float:
        """NF4 base linears at 0.5 B + quantisation constants (blocks of 64 with an fp32 absmax -> +0.0625 B,
        ~0.0157 B with double quantisation; Dettmers et al. 2023, §2); embeddings and head in the load dtype."""
        const = 0.0157 if st.double_quant else 0.0625
        lin = facts.linear_params()
        return lin * (0.5 + const) + (facts.param_count() - lin) * st.load_bytes

    def quantization(self, cfg, train_cfg):
        return bnb_config(cfg, compute_dtype(cfg, train_cfg.precision))

    def param_groups(self, model, cfg, train_cfg):
        return loraplus_groups(model, cfg, train_cfg)

    def prepare(self, loaded, cfg, train_cfg):
        from peft import prepare_model_for_kbit_training

        model = loaded.model
        if not is_quantized(model):
            raise ValueError("qlora: the base was not loaded quantised; load it with method.quantization(...)")
        keep_standard_4bit_layout(model)
        if train_cfg.precision == "pure_bf16":
            # prepare_model_for_kbit_training would upcast every non-quantised tensor to fp32.
            for p in model.parameters():
                p.requires_grad_(False)
            if train_cfg.gradient_checkpointing:
                model.enable_input_require_grads()
        else:
            # Freezes the base, upcasts norms/embeddings/head to fp32 for stability (QLoRA paper §3), and
            # makes the input embeddings require grad so checkpointed layers still get gradients.
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train_cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        return wrap_with_lora(model, cfg, loaded.family, train_cfg.precision)

    def save_trained(self, model, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        """The adapter on a base quantised as in training (the base is reloaded quantised if it is not)."""
        from transformers import AutoModelForCausalLM

        base = loaded.model
        if not is_quantized(base):
            base = AutoModelForCausalLM.from_pretrained(
                loaded.path, dtype=base.dtype, trust_remote_code=loaded.family.remote_code,
                quantization_config=bnb_config(cfg, compute_dtype(cfg, None, base.dtype)))
            loaded.model = base
        keep_standard_4bit_layout(base)
        return load_adapter(base, trained_dir)

    def merge(self, model):
        return merge_dequantized(model)
