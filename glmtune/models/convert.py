"""Convert a ChatGLM2/ChatGLM3/glm-4-9b-chat remote-code checkpoint into transformers' native `Glm` folder.

Those checkpoints (`model_type: chatglm`) are the same network as `GlmForCausalLM`: RMSNorm pre-norm blocks,
grouped-query attention with a fused QKV (`multi_query_group_num` kv heads), rotary on the first half of each
head with interleaved pairs, rope base `10000 * rope_ratio`, and a fused SwiGLU `dense_h_to_4h` (gate first).
The mapping follows transformers' own `models/glm/convert_glm_weights_to_hf.py` (not shipped in the wheel, and
it loads the whole model and fetches a tokenizer from the Hub, so it cannot be called here); we split the fused
QKV because the current `GlmAttention` has separate q/k/v projections.

Tensors are streamed one at a time from the source shards (safetensors via `safe_open`, `.bin` via a memory-mapped
`torch.load`) into `ShardWriter`, so peak memory stays near one output shard. ChatGLM-6B (GLM-130B blocks, 2D
positions) and quantized (`quantization_bit`) checkpoints are a different network and are refused here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.errors import GlmtuneError

NOTE_FILE = "glmtune_converted.json"
CONVERTER_VERSION = 2  # 2: per-head fused QKV of multi_query_attention=false checkpoints


class ConvertError(GlmtuneError, ValueError):
    """A checkpoint glmtune cannot convert (named file and field)."""


def _config(src: Path) -> dict:
    return json.loads((src / "config.json").read_text("utf-8"))


def why_not_convertible(src: Path) -> str | None:
    """None when `src` is a ChatGLM2/3/GLM-4 remote-code checkpoint this module converts, else the reason."""
    cfg = _config(src)
    where = f"{src / 'config.json'}"
    if cfg.get("model_type") != "chatglm":
        return f"{where}: model_type is {cfg.get('model_type')!r}, not 'chatglm'"
    if "padded_vocab_size" not in cfg or cfg.get("position_encoding_2d"):
        from glmtune.models import convert_chatglm6b

        if convert_chatglm6b.is_chatglm6b(cfg):  # its own native class and converter
            return convert_chatglm6b.why_not(src)
        return f"{where}: no padded_vocab_size: neither a ChatGLM2/3/GLM-4 nor a ChatGLM-6B config"
    if cfg.get("quantization_bit"):
        return f"{where}: quantization_bit={cfg['quantization_bit']}: quantized ChatGLM checkpoints are not converted"
    wanted = {"rmsnorm": True, "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
              "add_bias_linear": False}
    for key, value in wanted.items():
        if cfg.get(key, value) != value:
            return f"{where}: {key}={cfg.get(key)!r}; transformers' Glm only has {key}={value}"
    return None


def glm_config(cfg: dict):
    """The `GlmConfig` of a ChatGLM2/3/GLM-4 `config.json` (as in transformers' `convert_config`)."""
    from transformers import GlmConfig

    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("multi_query_group_num", 1) if cfg.get("multi_query_attention", False) else heads
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    out = GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        attention_dropout=cfg.get("attention_dropout", 0.0),
        max_position_embeddings=cfg.get("seq_length", 2048),
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        # ChatGLM rotates the first half of each head (RotaryEmbedding(kv_channels // 2)), base 10000 * rope_ratio.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * float(cfg.get("rope_ratio", 1)),
                         "partial_rotary_factor": 0.5},
        attention_bias=bool(cfg.get("add_qkv_bias", False)),
        use_cache=cfg.get("use_cache", True),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
    )
    out.architectures = ["GlmForCausalLM"]
    out.dtype = dtype
    return out


_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_LAYER_MAP = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # [gate; up], as Glm's MLP chunks it
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = re.compile(r".*rotary_pos_emb\.inv_freq$")  # a buffer the native model recomputes


def map_tensor(name: str, tensor, q_rows: int, kv_rows: int, per_head_qkv: int = 0) -> list[tuple[str, object]]:
    """Native (name, tensor) pairs for one source tensor; [] for a recomputed buffer; ConvertError if unknown.

    `per_head_qkv` = the number of heads when `multi_query_attention` is false: the fused QKV is then laid out
    per head, [h0: q k v][h1: q k v]... (the original code views it as (heads, 3 * head_dim)), not [q | k | v]."""
    if name in _TOP_MAP:
        return [(_TOP_MAP[name], tensor)]
    if _DROPPED.fullmatch(name):
        return []
    m = _LAYER.fullmatch(name)
    if m:
        i, rest = m.groups()
        if rest in _LAYER_MAP:
            return [(f"model.layers.{i}.{_LAYER_MAP[rest]}", tensor)]
        qkv = re.fullmatch(r"self_attention\.query_key_value\.(weight|bias)", rest)
        if qkv:
            kind = qkv.group(1)
            if tensor.shape[0] != q_rows + 2 * kv_rows:
                raise ConvertError(f"{name}: {tensor.shape[0]} rows, expected q {q_rows} + k/v 2x{kv_rows} "
                                   f"from num_attention_heads, multi_query_group_num and kv_channels")
            if per_head_qkv:
                h = per_head_qkv
                q, k, v = (t.reshape(q_rows, *tensor.shape[1:])
                           for t in tensor.reshape(h, 3, q_rows // h, *tensor.shape[1:]).unbind(1))
            else:
                q, k, v = tensor.split([q_rows, kv_rows, kv_rows], dim=0)
            return [(f"model.layers.{i}.self_attn.{p}_proj.{kind}", t.clone()) for p, t in (("q", q), ("k", k), ("v", v))]
    raise ConvertError(f"{name}: a tensor the ChatGLM -> Glm conversion does not know (prefix encoder? "
                       f"quantized weights?); nothing was written for it")


def source_files(src: Path) -> list[Path]:
    files = sorted(src.glob("*.safetensors"))
    if not files:
        files = sorted(p for p in src.glob("pytorch_model*.bin"))
    if not files:
        raise ConvertError(f"{src}: no *.safetensors or pytorch_model*.bin weight files")
    return files


def iter_tensors(files: list[Path]):
    """(name, tensor) from each weight file, one tensor in memory at a time for safetensors."""
    import torch
    from safetensors import safe_open

    from glmtune.utils.memory import release_freed_memory

    for f in files:
        if f.suffix == ".safetensors":
            # pread, not a memory map: every mapped page read stays resident while the file is open, so a
            # one-file checkpoint would count whole against the conversion's memory (as in export/merge.py).
            with safe_open(str(f), "pt", backend="pread") as h:
                for name in h.keys():
                    yield name, h.get_tensor(name)
                    release_freed_memory()
        else:  # memory-mapped: pages are read as each tensor is touched
            state = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                yield name, state.pop(name)
            del state


@dataclass
class ConvertResult:
    dst: Path
    tensors_in: int = 0
    tensors_out: int = 0
    dropped: list[str] = field(default_factory=list)
    max_buffered_bytes: int = 0

    def note(self, src: Path) -> str:
        return (f"glmtune: converted {src} (remote-code ChatGLM) to native Glm at {self.dst}: "
                f"{self.tensors_in} tensors -> {self.tensors_out} (fused QKV split; "
                f"{len(self.dropped)} rotary buffers dropped)")


def convert(src: Path, dst: Path, max_shard: str | int = "2GB", dtype: str | None = None) -> ConvertResult:
    """Write a native `Glm` folder at `dst` (weights, config, generation config, native tokenizer)."""
    import torch

    from glmtune.utils.shards import ShardWriter, parse_size
    from glmtune.models.load import load_tokenizer

    src, dst = Path(src), Path(dst)
    from glmtune.models import convert_chatglm6b

    if convert_chatglm6b.is_chatglm6b(_config(src)):
        return convert_chatglm6b.convert(src, dst, max_shard=max_shard, dtype=dtype)
    reason = why_not_convertible(src)
    if reason:
        raise ConvertError(reason)
    if not (src / "tokenizer_config.json").exists():
        raise ConvertError(f"{src}: no tokenizer_config.json (and its tokenizer.model); copy the tokenizer files "
                           f"of the checkpoint into the folder")
    cfg = _config(src)
    gcfg = glm_config(cfg)
    target = getattr(torch, dtype) if dtype else None
    q_rows = gcfg.num_attention_heads * gcfg.head_dim
    kv_rows = gcfg.num_key_value_heads * gcfg.head_dim

    dst.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(dst, parse_size(max_shard))
    res = ConvertResult(dst=dst)
    seen: set[str] = set()
    for name, t in iter_tensors(source_files(src)):
        res.tensors_in += 1
        out = map_tensor(name, t, q_rows, kv_rows,
                         0 if cfg.get("multi_query_attention", False) else gcfg.num_attention_heads)
        if not out:
            res.dropped.append(name)
        for new, tensor in out:
            if target is not None and tensor.is_floating_point():
                tensor = tensor.to(target)
            writer.add(new, tensor)
            seen.add(new)
            res.tensors_out += 1
    writer.close()
    res.max_buffered_bytes = writer.max_buffered_bytes
    expected = _expected_names(gcfg)
    missing = sorted(expected - seen)
    if missing:
        raise ConvertError(f"{src}: the checkpoint lacks {len(missing)} tensors the Glm model needs, e.g. {missing[0]}")
    if dtype:
        gcfg.dtype = dtype
    gcfg.save_pretrained(dst)
    if (src / "generation_config.json").exists():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
    tok = load_tokenizer(src)  # the native fast tokenizer + chat template the loader builds for this folder
    tok.save_pretrained(dst)
    for lic in ("LICENSE", "MODEL_LICENSE"):
        if (src / lic).exists():
            shutil.copy2(src / lic, dst / lic)
    (dst / NOTE_FILE).write_text(json.dumps({
        "converted_from": str(src.resolve()), "converter_version": CONVERTER_VERSION, "from": "chatglm remote code",
        "to": "GlmForCausalLM", "tensors_in": res.tensors_in, "tensors_out": res.tensors_out,
        "dropped": res.dropped}, indent=1) + "\n")
    return res


def _expected_names(gcfg) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not gcfg.tie_word_embeddings:
        names.add("lm_head.weight")
    for i in range(gcfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "self_attn.o_proj.weight",
                  p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight"}
        names |= {f"{p}self_attn.{x}_proj.weight" for x in "qkv"}
        if gcfg.attention_bias:
            names |= {f"{p}self_attn.{x}_proj.bias" for x in "qkv"}
    return names


def fingerprint(src: Path) -> str:
    """Cache key: config + tokenizer files' bytes and each weight file's name, size and mtime."""
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for p in sorted(src.iterdir()):
        if p.is_file():
            st = p.stat()
            if p.suffix in (".json", ".model", ".py"):
                h.update(p.name.encode() + p.read_bytes())
            else:
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def ensure_converted(src: Path) -> Path:
    """The cached native folder of `src`, converting it first if needed; prints one line saying which."""
    from glmtune.models.tiny import cache_root

    src = Path(src)
    dst = cache_root() / "converted" / f"{src.resolve().name}-{fingerprint(src)}"
    if (dst / NOTE_FILE).exists():
        done = json.loads((dst / NOTE_FILE).read_text())
        q = f", INT{done['quantization_bit']} weights dequantized" if done.get("quantization_bit") else ""
        print(f"glmtune: {src.name}: remote-code ChatGLM loaded as native {done.get('to', 'GlmForCausalLM')} from "
              f"the converted copy {dst}{q}", file=sys.stderr)
        return dst
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    res = convert(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    res.dst = dst
    print(res.note(src) + " (cached; its remote code is not run)", file=sys.stderr)
    return dst
