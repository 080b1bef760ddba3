"""Convert a ChatGLM-6B checkpoint (THUDM remote-code layout, fp16 or INT4/INT8) to glmtune's native class.

The native class (`glmtune/models/chatglm6b.py`) keeps the original parameter names, so the conversion:

* copies every tensor, cast to the requested dtype;
* drops `transformer.layers.N.attention.rotary_emb.inv_freq` (recomputed) and, when the config ties the head to
  the word embeddings (transformers' default, which the original loads with), `lm_head.weight`;
* dequantizes `quantization_bit` 4/8 checkpoints (ChatGLM-6B-INT4/-INT8, `quantization.py`): each quantized linear
  layer is stored as `weight` (int8; for INT4 two 4-bit values per byte) + `weight_scale` (fp16, one per output
  row). The original quantizes `q = round(w / s)` with `s = absmax(row) / (2**(bits-1) - 1)` in fp16, packs INT4
  pairs as `byte = (q[2j] << 4) | (q[2j+1] & 0xF)` (the first value in the high nibble) and at run time rebuilds
  `w = s * q` in fp16 (CUDA `int4/int8WeightExtractionHalf`, or the CPU kernel of the INT4 release: signed high
  nibble `byte >> 4`, signed low nibble `(byte << 4) >> 4`). We rebuild the same fp16 values once, here, then
  cast to the compute dtype: the converted folder is an ordinary full-precision checkpoint (memory of the fp16
  model, see `glmtune plan`), on which LoRA, P-Tuning v2, export and serving work unchanged.

Tensors stream one at a time into `ShardWriter` (a quantized weight waits only for its own scale).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.models.convert import ConvertError, NOTE_FILE, _config, iter_tensors, source_files

CONVERTER_VERSION = 1
QUANTIZED = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
_LAYER_PARTS = {f"{m}.{p}" for m in ("input_layernorm", "post_attention_layernorm") for p in ("weight", "bias")} | \
    {f"{m}.{p}" for m in QUANTIZED for p in ("weight", "bias")}
_TOP = {"transformer.word_embeddings.weight", "transformer.final_layernorm.weight",
        "transformer.final_layernorm.bias", "lm_head.weight"}


def is_chatglm6b(cfg: dict) -> bool:
    """ChatGLM-6B (first generation): `model_type chatglm` without ChatGLM2/3's `padded_vocab_size`."""
    return cfg.get("model_type") == "chatglm" and "padded_vocab_size" not in cfg and \
        ("position_encoding_2d" in cfg or "inner_hidden_size" in cfg)


def why_not(src: Path) -> str | None:
    cfg = _config(src)
    where = src / "config.json"
    bits = cfg.get("quantization_bit") or 0
    if bits not in (0, 4, 8):
        return f"{where}: quantization_bit={bits}; ChatGLM-6B checkpoints come as 0 (fp16), 4 or 8"
    if cfg.get("quantization_embeddings"):
        return (f"{where}: quantization_embeddings=true (ChatGLM-6B-INT4-QE: 4-bit embeddings) is not converted; "
                f"use the INT4 or fp16 checkpoint")
    if cfg.get("pre_seq_len"):
        return (f"{where}: pre_seq_len={cfg['pre_seq_len']} is set in the base checkpoint's config; remove it "
                f"(glmtune sets it from method.pre_seq_len when training P-Tuning v2)")
    for key in ("hidden_size", "num_layers", "num_attention_heads", "vocab_size", "inner_hidden_size"):
        if key not in cfg:
            return f"{where}: no {key}"
    return None


def native_config(cfg: dict, dtype: str | None = None):
    from glmtune.models.chatglm6b import ChatGLM6BConfig

    keep = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "layernorm_epsilon", "use_cache",
            "bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id",
            "max_sequence_length", "inner_hidden_size", "position_encoding_2d", "tie_word_embeddings")
    out = ChatGLM6BConfig(**{k: cfg[k] for k in keep if k in cfg})
    out.architectures = ["ChatGLM6BForCausalLM"]
    out.dtype = dtype or cfg.get("torch_dtype") or "float16"
    return out


def dequantize(weight, scale, bits: int):
    """fp16 weight [out, in] from the original's int8 `weight` ([out, in] for 8 bits, [out, in/2] packed for 4)
    and fp16 `weight_scale` [out], as the original's extraction kernels compute it."""
    import torch

    if weight.dtype != torch.int8:
        raise ConvertError(f"quantized weight has dtype {weight.dtype}, expected torch.int8")
    if bits == 8:
        q = weight.to(torch.float32)
    elif bits == 4:
        u = weight.to(torch.int16) & 0xFF
        hi, lo = u >> 4, u & 0xF
        hi, lo = hi - 16 * (hi >= 8).to(torch.int16), lo - 16 * (lo >= 8).to(torch.int16)  # signed nibbles
        q = torch.stack([hi, lo], dim=-1).reshape(weight.shape[0], weight.shape[1] * 2).to(torch.float32)
    else:
        raise ConvertError(f"quantization_bit={bits}: only 4 and 8 exist")
    # |q| <= 127 and s is fp16: q * s is exact in fp32; one rounding to fp16, as the fp16 kernels do.
    return (q * scale.to(torch.float32)[:, None]).to(torch.float16)


def quantize(weight, bits: int):
    """The original `QuantizedLinear` quantization (int8 values + fp16 scales), INT4 packed as its kernels pack it.
    Used by the tests to make INT4/INT8 checkpoints; conversion never needs it."""
    import torch

    scale = (weight.abs().max(dim=-1).values / ((2 ** (bits - 1)) - 1)).half()
    q = torch.round(weight / scale[:, None]).to(torch.int8)
    if bits == 4:
        u = q.to(torch.int16) & 0xF
        q = ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8).view(torch.int8)
    return q, scale


@dataclass
class Convert6BResult:
    dst: Path
    tensors_in: int = 0
    tensors_out: int = 0
    dropped: list[str] = field(default_factory=list)
    dequantized: int = 0
    bits: int = 0
    max_buffered_bytes: int = 0

    def note(self, src: Path) -> str:
        q = f"; {self.dequantized} INT{self.bits} layers dequantized" if self.bits else ""
        return (f"glmtune: converted {src} (remote-code ChatGLM-6B) to glmtune's native ChatGLM-6B class at "
                f"{self.dst}: {self.tensors_in} tensors -> {self.tensors_out} ({len(self.dropped)} dropped{q})")


def _expected(cfg) -> set[str]:
    names = {"transformer.word_embeddings.weight", "transformer.final_layernorm.weight",
             "transformer.final_layernorm.bias"}
    if not cfg.tie_word_embeddings:
        names.add("lm_head.weight")
    for i in range(cfg.num_layers):
        names |= {f"transformer.layers.{i}.{p}" for p in _LAYER_PARTS}
    return names


def convert(src: Path, dst: Path, max_shard: str | int = "2GB", dtype: str | None = None) -> Convert6BResult:
    """Write a native ChatGLM-6B folder at `dst` (weights, config, native tokenizer, licenses)."""
    import torch

    from glmtune.utils.shards import ShardWriter, parse_size
    from glmtune.models.load import load_tokenizer

    src, dst = Path(src), Path(dst)
    reason = why_not(src)
    if reason:
        raise ConvertError(reason)
    if not (src / "tokenizer_config.json").exists() or not (src / "ice_text.model").exists():
        raise ConvertError(f"{src}: no tokenizer_config.json + ice_text.model; copy the checkpoint's tokenizer files "
                           f"into the folder")
    cfg = _config(src)
    bits = int(cfg.get("quantization_bit") or 0)
    ncfg = native_config(cfg, dtype)
    target = getattr(torch, dtype) if dtype else None
    deq_dtype = target or getattr(torch, cfg.get("torch_dtype") or "float16")  # dequantized layers: the model's dtype
    dst.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(dst, parse_size(max_shard))
    res = Convert6BResult(dst=dst, bits=bits)
    seen: set[str] = set()
    pending: dict[str, object] = {}  # quantized weights waiting for their scale, or scales for their weight

    def put(name, t):
        if target is not None and t.is_floating_point():
            t = t.to(target)
        writer.add(name, t.contiguous())
        seen.add(name)
        res.tensors_out += 1

    for name, t in iter_tensors(source_files(src)):
        res.tensors_in += 1
        if name.endswith(".rotary_emb.inv_freq") or (name == "lm_head.weight" and ncfg.tie_word_embeddings):
            res.dropped.append(name)
            continue
        m = _LAYER.fullmatch(name)
        rest = m.group(2) if m else None
        if m and rest.endswith(".weight_scale") or (m and bits and rest.endswith(".weight")
                                                     and rest[:-len(".weight")] in QUANTIZED):
            if not bits:
                raise ConvertError(f"{name}: a quantized tensor, but config.json has no quantization_bit")
            base = name.rsplit(".", 1)[0]
            key = "scale" if name.endswith("_scale") else "weight"
            other = pending.pop((base, "weight" if key == "scale" else "scale"), None)
            if other is None:
                pending[(base, key)] = t
                continue
            w, s = (t, other) if key == "weight" else (other, t)
            if w.dtype != torch.int8:
                raise ConvertError(f"{base}.weight: dtype {w.dtype}; a quantization_bit={bits} checkpoint stores int8")
            if w.shape[1] * (8 // bits) != (ncfg.hidden_size if not base.endswith("dense_4h_to_h")
                                           else ncfg.inner_hidden_size):
                raise ConvertError(f"{base}.weight: shape {tuple(w.shape)} does not fit quantization_bit={bits}")
            put(base + ".weight", dequantize(w, s, bits).to(deq_dtype))
            res.dequantized += 1
            continue
        if name in _TOP or (m and rest in _LAYER_PARTS):
            put(name, t)
            continue
        raise ConvertError(f"{name}: a tensor the ChatGLM-6B conversion does not know (prefix encoder? quantized "
                           f"embeddings?); nothing was written for it")
    writer.close()
    if pending:
        (base, key), _ = next(iter(pending.items()))
        raise ConvertError(f"{base}: has a {key} but no {'weight_scale' if key == 'weight' else 'weight'}")
    res.max_buffered_bytes = writer.max_buffered_bytes
    missing = sorted(_expected(ncfg) - seen)
    if missing:
        raise ConvertError(f"{src}: the checkpoint lacks {len(missing)} tensors ChatGLM-6B needs, e.g. {missing[0]}")
    ncfg.save_pretrained(dst)
    tok = load_tokenizer(src)
    tok.save_pretrained(dst)
    for lic in ("LICENSE", "MODEL_LICENSE"):
        if (src / lic).exists():
            shutil.copy2(src / lic, dst / lic)
    (dst / NOTE_FILE).write_text(json.dumps({
        "converted_from": str(src.resolve()), "converter_version": CONVERTER_VERSION,
        "from": "chatglm-6b remote code", "to": "ChatGLM6BForCausalLM (glmtune native)", "quantization_bit": bits,
        "dequantized_layers": res.dequantized, "tensors_in": res.tensors_in, "tensors_out": res.tensors_out,
        "dropped": res.dropped}, indent=1) + "\n")
    return res
