"""Model facts the planner needs: shapes (for parameter and activation counts), vocabulary, context,
LoRA target names, template and licence — from a checkpoint's `config.json` or a small built-in table.

Why a table: users plan *before* downloading 18 GB (LLaMA-Factory and the official finetune scripts estimate nothing upfront).
Shapes in the table are copied from each model's published `config.json` on the Hugging Face Hub
(THUDM/glm-4-9b-chat-hf, THUDM/glm-4-9b-chat, THUDM/GLM-4-9B-0414, THUDM/chatglm3-6b,
THUDM/chatglm-6b(-int4), meta-llama/Meta-Llama-3-8B-Instruct, Qwen/Qwen2.5-7B-Instruct); parameter
counts are *computed* from the shapes (`param_count`), e.g. GLM-4-9B -> 9.40 B, which matches the
9.4 B the model card states.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

CLOUD_ONLY = ("glm-4-flash", "glm-4-air", "glm-4-airx", "glm-4-plus", "glm-4-long", "glm-4-0520", "glm-4")


@dataclass(frozen=True)
class TemplateShape:
    """Tokens a chat template adds, for estimating lengths without the real tokenizer."""
    name: str
    prefix: int          # tokens before the first message, e.g. GLM-4 "[gMASK]<sop>"
    per_message: int     # role header tokens per message, e.g. "<|user|>" + "\n"
    suffix: int          # tokens closing a training sample (eos / turn end) — supervised
    default_system: int = 0  # tokens of a system prompt the template injects when none is given (Qwen)


TEMPLATES = {
    "glm4": TemplateShape("glm4", 2, 2, 1),
    "chatglm3": TemplateShape("chatglm3", 2, 3, 1),
    "chatglm": TemplateShape("chatglm", 0, 4, 1),        # "[Round 0]\n问：…\n答：…"
    "llama3": TemplateShape("llama3", 1, 4, 1),          # <|start_header_id|>role<|end_header_id|>\n\n … <|eot_id|>
    "chatml": TemplateShape("chatml", 0, 5, 1, default_system=20),
}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    family: str                 # glm | glm4 | chatglm | llama | qwen2 | generic
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    tie_embeddings: bool = False
    mlp: str = "swiglu"         # swiglu (3 matrices: gate, up, down) | gelu (2 matrices, ChatGLM-6B)
    norms_per_layer: int = 2    # GLM-4-0414 (model_type glm4) has 4 (sandwich norms)
    qkv_bias: bool = False
    lora_targets: tuple[str, ...] = ()
    template: str = "glm4"
    licence: str = ""
    cjk_chars_per_token: float = 1.5   # for length estimates when the real tokenizer is not at hand
    digits_per_token: int = 3          # tiktoken-style digit grouping (GLM-4, Llama-3); 1 for Qwen/SentencePiece
    quantized_bits: int | None = None  # chatglm-6b-int4 ships 4-bit weights
    source: str = "built-in"           # "built-in" | path of the config.json read
    folder: str | None = None          # checkpoint folder when read from disk (tokenizer available)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(module name, in_features, out_features) of one decoder layer's linears, named as in the
        checkpoint so LoRA target names line up (GLM: q/k/v/o_proj + fused gate_up_proj)."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.family == "chatglm":
            attn = [("query_key_value", h, q + 2 * kv), ("dense", q, h)]
            up = [("dense_h_to_4h", h, 2 * i if self.mlp == "swiglu" else i)]
            return attn + up + [("dense_4h_to_h", i, h)]
        attn = [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h)]
        if self.family in ("glm", "glm4"):
            return attn + [("gate_up_proj", h, 2 * i), ("down_proj", i, h)]
        return attn + [("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]

    def layer_params(self) -> int:
        n = sum(a * b for _, a, b in self.linear_shapes())
        if self.qkv_bias:
            n += self.q_dim + 2 * self.kv_dim
        return n + self.norms_per_layer * self.hidden

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    def param_count(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params() + self.hidden

    def linear_params(self) -> int:
        """Parameters in decoder-layer linears: what bitsandbytes 4-bit quantises (embeddings and the
        LM head stay in the compute dtype)."""
        return self.layers * sum(a * b for _, a, b in self.linear_shapes())

    def to_json(self) -> dict:
        d = asdict(self)
        d["params"] = self.param_count()
        return d


_GLM4_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
_GLM_LICENCE = "GLM-4 model licence: free for research; commercial use after registration with Zhipu AI"
_CHATGLM_LICENCE = "ChatGLM model licence: free for research; commercial use after registration"

_GLM4_9B = dict(family="glm", layers=40, hidden=4096, intermediate=13696, heads=32, kv_heads=2, head_dim=128,
                vocab=151552, context=131072, qkv_bias=True, lora_targets=_GLM4_TARGETS, template="glm4",
                licence=_GLM_LICENCE, cjk_chars_per_token=1.5, digits_per_token=3)

BUILTIN: dict[str, ModelFacts] = {
    "glm-4-9b-chat-hf": ModelFacts("glm-4-9b-chat-hf", **_GLM4_9B),
    "glm-4-9b-chat": ModelFacts(
        "glm-4-9b-chat", **{**_GLM4_9B, "family": "chatglm",
                            "lora_targets": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")},
        notes=("remote-code checkpoint (trust_remote_code); prefer glm-4-9b-chat-hf, the transformers-native "
               "copy of the same weights",)),
    "glm-4-9b-0414": ModelFacts("GLM-4-9B-0414", **{**_GLM4_9B, "family": "glm4", "context": 32768,
                                                    "norms_per_layer": 4}),
    "chatglm3-6b": ModelFacts(
        "chatglm3-6b", family="chatglm", layers=28, hidden=4096, intermediate=13696, heads=32, kv_heads=2,
        head_dim=128, vocab=65024, context=8192, qkv_bias=True,
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), template="chatglm3",
        licence=_CHATGLM_LICENCE, cjk_chars_per_token=1.3, digits_per_token=1,
        notes=("remote-code checkpoint: model.trust_remote_code=true",)),
    "chatglm-6b": ModelFacts(
        "chatglm-6b", family="chatglm", layers=28, hidden=4096, intermediate=16384, heads=32, kv_heads=32,
        head_dim=128, vocab=130528, context=2048, mlp="gelu", qkv_bias=True,
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), template="chatglm",
        licence=_CHATGLM_LICENCE, cjk_chars_per_token=1.4, digits_per_token=1,
        notes=("remote-code checkpoint: glmtune loads it as its native ChatGLM-6B class (converted, its code is "
               "not run)", "2048-token context: long rubric prompts do not fit")),
}
BUILTIN["chatglm-6b-int4"] = replace(
    BUILTIN["chatglm-6b"], name="chatglm-6b-int4", quantized_bits=4,
    notes=BUILTIN["chatglm-6b"].notes + ("weights ship quantised to 4 bits (3.9 GB on disk); glmtune dequantizes "
                                         "them to the load dtype, so P-Tuning v2 / LoRA train on a base of the "
                                         "fp16 model's size; full/freeze would train the rounded weights: use "
                                         "chatglm-6b",))
BUILTIN["llama-3-8b-instruct"] = ModelFacts(
    "Llama-3-8B-Instruct", family="llama", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8,
    head_dim=128, vocab=128256, context=8192,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    template="llama3", licence="Meta Llama 3 Community Licence (700M MAU limit, attribution)",
    cjk_chars_per_token=1.1, digits_per_token=3)
BUILTIN["qwen2.5-7b-instruct"] = ModelFacts(
    "Qwen2.5-7B-Instruct", family="qwen2", layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4,
    head_dim=128, vocab=152064, context=32768, qkv_bias=True,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    template="chatml", licence="Apache-2.0", cjk_chars_per_token=1.4, digits_per_token=1)
ALIASES = {"glm-4-9b-chat-1m": "glm-4-9b-chat", "glm-4-9b-chat-1m-hf": "glm-4-9b-chat-hf",
           "meta-llama-3-8b-instruct": "llama-3-8b-instruct", "glm4-9b-chat": "glm-4-9b-chat",
           "glm-4-9b": "glm-4-9b-chat-hf", "glm-4-9b-hf": "glm-4-9b-chat-hf"}


class CloudOnlyModel(ValueError):
    """GLM-4-Flash/Air/AirX are API-only: no weights, so no local fine-tuning."""

    def __init__(self, name: str):
        super().__init__(
            f"{name} is a cloud-only Zhipu model: its weights are not published, so it cannot be fine-tuned "
            f"locally. Tune it on open.bigmodel.cn with a JSONL built by `glmtune oral build --zhipu`, or pick "
            f"glm-4-9b-chat-hf (same family, open weights) for local training.")
        self.name = name


def _key(name: str) -> str:
    key = name.strip().rstrip("/").split("/")[-1].lower()
    return ALIASES.get(key, key)


def builtin_facts(name: str) -> ModelFacts | None:
    key = _key(name)
    if key in CLOUD_ONLY:
        raise CloudOnlyModel(name.split("/")[-1])
    return BUILTIN.get(key)


_FAMILY_DEFAULTS = {"glm": ("glm4", _GLM_LICENCE), "glm4": ("glm4", _GLM_LICENCE),
                    "chatglm": ("chatglm3", _CHATGLM_LICENCE), "llama": ("llama3", ""), "qwen2": ("chatml", ""),
                    "qwen3": ("chatml", "")}


def facts_from_config(cfg: dict, name: str = "model", source: str = "config.json") -> ModelFacts:
    """Facts from a transformers `config.json` (native GLM/GLM-4/Llama/Qwen, and ChatGLM remote-code keys)."""
    mt = cfg.get("model_type", "generic")
    if mt in ("chatglm", "glmtune_chatglm6b"):  # remote-code ChatGLM keys (also glmtune's native ChatGLM-6B)
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("kv_channels", hidden // heads)
        kv = cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention") else heads
        inter = cfg.get("ffn_hidden_size") or cfg.get("inner_hidden_size") or 4 * hidden
        glm1 = "inner_hidden_size" in cfg and "ffn_hidden_size" not in cfg
        return ModelFacts(
            name, "chatglm", cfg.get("num_layers") or cfg["num_hidden_layers"], hidden, inter, heads, kv, head_dim,
            cfg.get("padded_vocab_size") or cfg["vocab_size"],
            cfg.get("seq_length") or cfg.get("max_sequence_length", 2048), False,
            "gelu" if glm1 else "swiglu", 2, cfg.get("add_qkv_bias", glm1),
            ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
            "chatglm" if glm1 else ("glm4" if cfg.get("padded_vocab_size", 0) > 100000 else "chatglm3"),
            _CHATGLM_LICENCE, quantized_bits=cfg.get("quantization_bit") if cfg.get("quantization_bit") else None,
            source=source, notes=(("remote-code checkpoint: glmtune loads it as a native class (converted, "
                                   "its code is not run)",) if mt == "chatglm" else ()))
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    template, licence = _FAMILY_DEFAULTS.get(mt, ("glm4", ""))
    family = {"qwen3": "qwen2"}.get(mt, mt if mt in ("glm", "glm4", "llama", "qwen2") else "generic")
    names = (_GLM4_TARGETS if family in ("glm", "glm4")
             else ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    quant = cfg.get("quantization_config") or {}
    bits = 4 if quant.get("load_in_4bit") or quant.get("bits") == 4 else (8 if quant.get("load_in_8bit") else None)
    return ModelFacts(
        name, family, cfg["num_hidden_layers"], hidden, cfg.get("intermediate_size", 4 * hidden), heads,
        cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or hidden // heads, cfg["vocab_size"],
        cfg.get("max_position_embeddings", 2048), bool(cfg.get("tie_word_embeddings", False)), "swiglu",
        4 if mt == "glm4" else 2, bool(cfg.get("attention_bias", mt == "qwen2")), names, template, licence,
        quantized_bits=bits, source=source)


def model_facts(path: str) -> ModelFacts:
    """Facts for `model.path`: a folder (or `tiny:NAME`) -> its config.json; a known name -> the table.

    Raises CloudOnlyModel for GLM-4-Flash/Air/AirX, and ValueError for an unknown name that is not a folder.
    """
    from glmtune.models.load import resolve_path

    try:
        folder = resolve_path(path)
    except FileNotFoundError:
        facts = builtin_facts(path)
        if facts is None:
            known = ", ".join(sorted({f.name for f in BUILTIN.values()}))
            raise ValueError(f"model.path {path!r} is neither a checkpoint folder nor a known model name "
                             f"({known})") from None
        return facts
    cfg = json.loads((Path(folder) / "config.json").read_text("utf-8"))
    name = path if path.startswith("tiny:") else Path(folder).name
    return replace(facts_from_config(cfg, name, str(Path(folder) / "config.json")), folder=str(folder))


def facts_for_loaded(loaded) -> ModelFacts:
    """Facts of a model `glmtune.models.load.load` returned (what `glmtune train`'s pre-flight passes)."""
    cfg = loaded.model.config.to_dict()
    return replace(facts_from_config(cfg, Path(loaded.path).name, str(Path(loaded.path) / "config.json")),
                   folder=str(loaded.path))


# ---- token counts without the real tokenizer --------------------------------------------------------
# A tiktoken/GPT-4-style pre-tokenizer split (GLM-4 and Llama-3 use one), then per piece: CJK at
# `cjk_chars_per_token` (GLM-4's 151k vocabulary: about 1.3-1.6 Chinese characters per token; 1.5 used),
# digits in groups of `digits_per_token`, letters ~5 per token, punctuation ~2 per token.
_PIECE = r"\p{Han}+|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+"


def estimate_tokens(text: str, facts: ModelFacts) -> int:
    import regex

    n = 0
    for piece in regex.findall(_PIECE, text):
        if regex.match(r"\p{Han}", piece):
            n += math.ceil(len(piece) / facts.cjk_chars_per_token)
        elif regex.match(r"\p{N}", piece):
            n += math.ceil(len(piece) / facts.digits_per_token)
        elif regex.search(r"\p{L}", piece):
            n += math.ceil(len(piece.strip()) / 5)
        elif piece.strip():
            n += math.ceil(len(piece.strip()) / 2)
        elif "\n" in piece:
            n += 1
    return n


@dataclass
class EstimatedStats:
    """Same fields as `glmtune.data.stats.DataStats`, counted by `estimate_tokens` (labelled approximate)."""
    total: list[int]
    prompt: list[int]
    supervised: list[int]
    turns: list[int]
    template_overhead: int
    approximate: bool = True
    note: str = ""


def estimate_stats(conversations, facts: ModelFacts, loss_on: str = "all_assistant") -> EstimatedStats:
    """Lengths for a model that is not on disk: template shape from the table + `estimate_tokens`."""
    t = TEMPLATES.get(facts.template, TEMPLATES["glm4"])
    out = EstimatedStats([], [], [], [], t.prefix + 2 * t.per_message + t.suffix, note=(
        f"token counts are estimates for {facts.name} (no tokenizer on disk): Chinese at "
        f"{facts.cjk_chars_per_token} chars/token, digits in groups of {facts.digits_per_token}; expect ±15%. "
        f"Point model.path at the checkpoint folder for exact counts."))
    for conv in conversations:
        msgs = conv.messages
        sys_tok = 0 if msgs and msgs[0]["role"] == "system" else t.default_system
        answers = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        learned = set(answers[-1:] if loss_on == "last_turn" else answers)
        total, sup = t.prefix + sys_tok, 0
        for k, m in enumerate(msgs):
            body = estimate_tokens(m["content"], facts)
            total += t.per_message + body
            if k in learned:
                sup += body + (1 if k < len(msgs) - 1 else t.suffix)
        total += t.suffix
        out.total.append(total)
        out.supervised.append(sup)
        out.prompt.append(total - sup)
        out.turns.append(len(answers))
    return out
