"""Tokenizer + model from a folder (native GLM/GLM-4, remote-code ChatGLM, any causal LM).

`tiny:NAME` resolves to an embedded tiny checkpoint folder first, and a `.gguf` file to its dequantized cached
folder (models/gguf_base.py); then both take the same path as a real one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.errors import InputError, MissingFileError
from glmtune.models.families import Family, family_of


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    family: Family
    path: Path


def resolve_path(path: str) -> Path:
    if path.startswith("tiny:"):
        from glmtune.models.tiny import ensure_tiny

        return ensure_tiny(path.split(":", 1)[1])
    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf":  # a GGUF base: its dequantized, cached HF folder
        from glmtune.models.gguf_base import hf_folder_for

        return hf_folder_for(p)
    if not (p / "config.json").exists():
        raise MissingFileError(
            f"model.path {path!r}: no config.json there. Give a downloaded checkpoint folder "
            f"(e.g. glm-4-9b-chat-hf) or tiny:glm4 / tiny:glm; weights are never fetched from a hub."
        )
    return p


def torch_dtype(name: str, precision: str = "fp32"):
    import torch

    if name == "auto":
        # Mixed precision keeps master weights fp32; pure_bf16 loads bf16.
        return torch.bfloat16 if precision == "pure_bf16" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


_NOTED: set[str] = set()


def load_tokenizer(path: Path, trust_remote_code: bool = False, chat_template: str | None = None):
    from transformers import AutoTokenizer

    from glmtune.models.native_tokenizers import build_native, note, remote_kind

    kind = remote_kind(Path(path))
    if kind is not None:  # remote ChatGLM tokenizer code: broken on transformers 5; same vocabulary, native
        tok = build_native(Path(path), kind)
        if str(path) not in _NOTED:
            _NOTED.add(str(path))
            print(note(Path(path), kind), file=sys.stderr)
    else:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        from glmtune.config.load import ConfigError

        raise ConfigError(
            f"{path}: the tokenizer has no chat_template. Set model.chat_template so training and serving "
            f"render prompts the same way."
        )
    return tok


def model_type_of(path: Path) -> str | None:
    import json

    return json.loads((path / "config.json").read_text()).get("model_type")


def route_family(path: Path) -> Family:
    """The family the loader will actually build for `path` (a convertible ChatGLM folder loads as native Glm)."""
    mt = model_type_of(path)
    if mt == "chatglm":
        import json

        from glmtune.models.convert import why_not_convertible
        from glmtune.models.convert_chatglm6b import is_chatglm6b

        if why_not_convertible(path) is None:
            chatglm6b = is_chatglm6b(json.loads((path / "config.json").read_text()))
            return family_of("glmtune_chatglm6b" if chatglm6b else "glm")
    return family_of(mt)


def native_route(path: Path) -> Path:
    """A ChatGLM-6B, ChatGLM2/3 or glm-4-9b-chat remote-code folder (whose code fails on transformers 5) becomes
    its cached native conversion (Glm, or glmtune's ChatGLM-6B class); anything else keeps the remote-code route.
    Prints the route taken."""
    from glmtune.models.convert import ensure_converted, why_not_convertible

    reason = why_not_convertible(path)
    if reason is None:
        return ensure_converted(path)
    print(f"glmtune: {path.name}: remote-code route ({reason})", file=sys.stderr)
    return path


def load(model_cfg, precision: str = "fp32", quantization_config=None, device_map=None,
         config_overrides: dict | None = None) -> Loaded:
    """Load tokenizer and model described by a `ModelSection`; `config_overrides` set model-config values
    before the model is built (a method's load-time hook, e.g. ChatGLM's `pre_seq_len`)."""
    from transformers import AutoModelForCausalLM

    from glmtune.models.chatglm6b import register

    register()  # glmtune's native ChatGLM-6B class, for converted ChatGLM-6B folders and their exports
    path = resolve_path(model_cfg.path)
    if model_type_of(path) == "chatglm":
        path = native_route(path)
    family = family_of(model_type_of(path))
    if family.remote_code and not model_cfg.trust_remote_code:
        raise InputError(f"{path} is a remote-code {family.name} checkpoint: set model.trust_remote_code=true")
    tok = load_tokenizer(path, model_cfg.trust_remote_code, model_cfg.chat_template)
    kwargs: dict[str, Any] = dict(
        dtype=torch_dtype(model_cfg.dtype, precision),
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if not family.remote_code and not (family.name == "chatglm6b" and model_cfg.attn_implementation in ("sdpa", "eager")):
        # (glmtune's ChatGLM-6B class has one attention, the original's fp32-softmax math; other values still
        # reach transformers, which refuses them by name)
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    kwargs.update(config_overrides or {})  # from_pretrained applies unknown kwargs to the config
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return Loaded(model=model, tokenizer=tok, family=family, path=path)


def stop_token_ids(tokenizer, family: Family) -> list[int]:
    """Token ids that end a generated answer: the tokenizer's eos plus the family's turn-closing tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in family.stop_tokens if t in vocab)
    return sorted(ids)
