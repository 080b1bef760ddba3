"""Native fast tokenizers for the remote-code GLM folders (glm-4-9b-chat, chatglm3-6b, chatglm-6b).

Their `tokenization_chatglm.py` no longer runs on transformers 5 (`_pad() got an unexpected keyword argument
'padding_side'`; chatglm-6b's cannot even be constructed), so glmtune builds a `PreTrainedTokenizerFast` from the
same vocabulary file with transformers' own converters and the family's special tokens at their official ids:

- glm-4-9b-chat: the tiktoken `tokenizer.model` through `TikTokenConverter` with GLM-4's split pattern (what
  glm-4-9b-chat-hf's `tokenizer.json` was built with); its shipped chat template.
- chatglm3-6b: the SentencePiece BPE `tokenizer.model` through `SpmConverter.build_tokenizer_from_spm_proto`
  (each text chunk between special tokens gets its own dummy prefix, exactly like `build_single_message`, which
  encodes `"\\n"` and the content separately); a chat template with `build_single_message` semantics.
- chatglm-6b: the SentencePiece unigram `ice_text.model` the same way, after the official pre-processing
  (`\\n` -> `<n>`, tab -> `<|tab|>`, runs of 2..80 spaces -> `<|blank_N|>`); the ChatGLM-6B P-Tuning prompt
  `[Round N]\\n问：…\\n答：` (history rounds, system text as the `source_prefix`), then `[gMASK]<sop>answer<eop>`.

Ids equal the official tokenizers' on the parity fixtures (tests/assets/official_ids, made by the official code)
and the official encoders' on a corpus (tests/models/test_native_tokenizers.py). One known difference, chatglm-6b
only: its unigram vocabulary gives a run of one repeated character ("好好好", "[[[") two segmentations of exactly
equal score, and tokenizers' Viterbi breaks that tie the other way from SentencePiece's ([好, 好好] vs [好好, 好]):
same pieces, same text, about 1 text in 3,000 of a random CJK/punctuation mix.
Built tokenizers are cached by the vocabulary's sha256 (the GLM-4 conversion takes seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from glmtune.config.load import ConfigError

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                 "<|end_of_video|>"]
# ChatGLM3: appended after the 64789 SentencePiece pieces, in this order (SPTokenizer.__init__).
CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]
# ChatGLM-6B: control pieces of ice_text.model itself (ids 130000..130007).
CHATGLM6B_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]

# ChatGLM3 `build_single_message(role, metadata, content)` = <|role|> + encode(f"{metadata}\n") + encode(content),
# each encode with its own SentencePiece dummy prefix. With a prefix per chunk between special tokens, the chunk
# "\n content" encodes as "▁\n" + "▁content" = the same two encodes (SentencePiece never merges across "▁");
# empty content encodes to nothing, so no space is written for it.
CHATGLM3_CHAT_TEMPLATE = (
    "[gMASK]sop"
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant', 'observation'] %}"
    "{{ raise_exception('unknown role: ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['metadata'] if m['metadata'] is defined and m['metadata'] else '' }}\n"
    "{% if m['content'] %} {{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# ChatGLM-6B P-Tuning `main.py` with --history_column: prompt = prefix + "[Round i]\n问：{q}\n答：{a}\n"... +
# "[Round n]\n问：{q}\n答："; ids = encode(prompt) + [gMASK, <sop>] + encode(answer) + [<eop>]. Only the final
# answer is an answer; earlier ones are history text (train with data.loss_on=last_turn).
CHATGLM6B_CHAT_TEMPLATE = (
    "{% set ns = namespace(round=0) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if not loop.first %}"
    "{{ raise_exception('chatglm-6b: a system message must come first') }}{% endif %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}[Round {{ ns.round }}]\n问：{{ m['content'] }}\n答："
    "{% elif m['role'] == 'assistant' %}"
    "{% if loop.last and not add_generation_prompt %}[gMASK]<sop>{{ m['content'] }}<eop>"
    "{% else %}{{ m['content'] }}\n{% set ns.round = ns.round + 1 %}{% endif %}"
    "{% else %}{{ raise_exception('chatglm-6b has no ' + m['role'] + ' role') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}[gMASK]<sop>{% endif %}"
)


class NativeTokenizerError(ConfigError):
    pass


def remote_kind(path: Path) -> str | None:
    """'glm4' | 'chatglm3' | 'chatglm6b' when `path` holds one of the remote-code GLM tokenizers, else None."""
    cfg_file = path / "tokenizer_config.json"
    if not cfg_file.exists():
        return None
    cfg = json.loads(cfg_file.read_text("utf-8"))
    auto = (cfg.get("auto_map") or {}).get("AutoTokenizer")
    cls = (auto[0] if isinstance(auto, list) else auto) or ""
    if cls.endswith("ChatGLM4Tokenizer") and (path / "tokenizer.model").exists():
        return "glm4"
    if cls.endswith("ChatGLMTokenizer"):
        if (path / "ice_text.model").exists():
            return "chatglm6b"
        if (path / "tokenizer.model").exists():
            return "chatglm3"
    return None


def vocab_file(path: Path, kind: str) -> Path:
    return path / ("ice_text.model" if kind == "chatglm6b" else "tokenizer.model")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _glm4_backend(vocab: Path):
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(vocab), pattern=GLM4_PATTERN).converted()
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in GLM4_SPECIALS])
    for i, t in enumerate(GLM4_SPECIALS):
        if tok.token_to_id(t) != base + i:
            raise NativeTokenizerError(f"{vocab}: {t} would get id {tok.token_to_id(t)}, expected {base + i}")
    return tok


def _spm_backend(vocab: Path, kind: str):
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = pb.ModelProto()
    proto.ParseFromString(vocab.read_bytes())
    if proto.trainer_spec.model_type == 2:  # BPE
        pieces = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:  # unigram: SentencePiece never emits control pieces from text; keep the converted model from it too
        pieces = [(p.piece, p.score if p.type != 3 else -1e9) for p in proto.pieces]
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, pieces)
    n = len(proto.pieces)
    if kind == "chatglm3":
        specials = CHATGLM3_SPECIALS
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
        want = {t: n + i for i, t in enumerate(specials)}
    else:
        # The official SPTokenizer._preprocess runs before SentencePiece's own normalisation.
        pre = [normalizers.Replace("\n", "<n>"), normalizers.Replace("\t", "<|tab|>")]
        pre += [normalizers.Replace(" " * i, f"<|blank_{i}|>") for i in range(80, 1, -1)]
        tok.normalizer = normalizers.Sequence(pre + [tok.normalizer])
        specials = CHATGLM6B_SPECIALS
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
        want = {t: i for i, p in enumerate(proto.pieces) for t in specials if p.piece == t}
        # decoding: <n>, <|tab|>, <|blank_N|> back to text (SPTokenizer.postprocess)
        from tokenizers import decoders

        tok.decoder = decoders.Sequence([decoders.Replace("<n>", "\n"), decoders.Replace("<|tab|>", "\t")]
                                        + [decoders.Replace(f"<|blank_{i}|>", " " * i) for i in range(2, 81)]
                                        + [tok.decoder])
    for t, i in want.items():
        if tok.token_to_id(t) != i:
            raise NativeTokenizerError(f"{vocab}: {t} would get id {tok.token_to_id(t)}, expected {i}")
    return tok


def build_native(path: Path, kind: str):
    """A `PreTrainedTokenizerFast` equal to the folder's remote tokenizer, with the family's chat template."""
    from transformers import PreTrainedTokenizerFast

    from glmtune.models.tiny import cache_root

    vocab = vocab_file(path, kind)
    cache = cache_root() / "native-tokenizers" / f"{kind}-{_sha(vocab)[:16]}-v1.json"
    if not cache.exists():
        backend = _glm4_backend(vocab) if kind == "glm4" else _spm_backend(vocab, kind)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        backend.save(str(tmp))
        tmp.replace(cache)
    cfg = json.loads((path / "tokenizer_config.json").read_text("utf-8"))
    if kind == "glm4":
        special = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        extra, template = GLM4_SPECIALS[1:], cfg.get("chat_template")
    elif kind == "chatglm3":
        special = dict(eos_token="</s>", pad_token="<unk>", unk_token="<unk>", bos_token="<s>")
        extra, template = CHATGLM3_SPECIALS, cfg.get("chat_template") or CHATGLM3_CHAT_TEMPLATE
    else:
        special = dict(eos_token="<eop>", bos_token="<sop>", pad_token="<pad>", unk_token="<unk>",
                       mask_token="[MASK]")
        extra, template = [t for t in CHATGLM6B_SPECIALS if t not in ("<eop>", "<sop>", "[MASK]")], \
            cfg.get("chat_template") or CHATGLM6B_CHAT_TEMPLATE
    # From the file, not `tokenizer_object=` (that deep-copies 150k merges: seconds).
    tok = PreTrainedTokenizerFast(tokenizer_file=str(cache), padding_side="left", clean_up_tokenization_spaces=False,
                                  additional_special_tokens=extra, **special)
    tok.chat_template = template
    tok.name_or_path = str(path)
    return tok


def note(path: Path, kind: str) -> str:
    return (f"glmtune: {path.name}: the remote tokenizer code does not run on transformers 5; using a native fast "
            f"tokenizer built from {vocab_file(path, kind).name} (same ids)")
