"""Per-family facts: stop tokens, LoRA target names, how P-Tuning v2 is done.

A family is recognised from `config.model_type`; anything unknown falls back to `generic`, which works
for any Hugging Face causal LM whose tokenizer carries a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # Tokens that end an assistant turn when generated (GLM-4 closes a turn with the next role token).
    stop_tokens: tuple[str, ...] = ()
    # Named LoRA targets for `method.targets: attention|mlp`; `all` means every linear layer but the head.
    attention_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp_targets: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    # "peft": PEFT prefix tuning (native models); "pre_seq_len": the remote-code ChatGLM prefix encoder.
    prefix_mechanism: str = "peft"
    remote_code: bool = False
    decoder_layer: str | None = None  # class name FSDP auto-wraps
    notes: tuple[str, ...] = field(default_factory=tuple)


GLM4_STOPS = ("<|endoftext|>", "<|user|>", "<|observation|>")

FAMILIES: tuple[Family, ...] = (
    Family("glm4", ("glm4",), GLM4_STOPS, mlp_targets=("gate_up_proj", "down_proj"), decoder_layer="Glm4DecoderLayer"),
    Family("glm", ("glm",), GLM4_STOPS, mlp_targets=("gate_up_proj", "down_proj"), decoder_layer="GlmDecoderLayer"),
    Family(
        "chatglm",
        ("chatglm",),
        ("<|user|>", "<|observation|>", "</s>", "<eos>"),
        attention_targets=("query_key_value", "dense"),
        mlp_targets=("dense_h_to_4h", "dense_4h_to_h"),
        prefix_mechanism="pre_seq_len",
        remote_code=True,
        decoder_layer="GLMBlock",
        notes=("remote-code model: load with model.trust_remote_code=true",),
    ),
    # ChatGLM-6B (first generation), as glmtune's native class (models/chatglm6b.py): original module names,
    # its own prefix encoder (pre_seq_len), an answer closed by <eop>.
    Family(
        "chatglm6b",
        ("glmtune_chatglm6b",),
        ("<eop>",),
        attention_targets=("query_key_value", "dense"),
        mlp_targets=("dense_h_to_4h", "dense_4h_to_h"),
        prefix_mechanism="pre_seq_len",
        decoder_layer="GLMBlock",
    ),
    Family("llama", ("llama",), ("<|eot_id|>", "<|end_of_text|>"), decoder_layer="LlamaDecoderLayer"),
    Family("qwen2", ("qwen2", "qwen3"), ("<|im_end|>", "<|endoftext|>"), decoder_layer="Qwen2DecoderLayer"),
)
GENERIC = Family("generic", ())


def family_of(model_type: str | None) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return GENERIC
