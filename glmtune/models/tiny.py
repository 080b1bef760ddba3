"""Embedded tiny GLM models: a GLM-4-architecture model built from a config plus a byte-level BPE
tokenizer trained locally, with GLM-4's special tokens and chat template.

They are the demo default and the test fixture. `ensure_tiny("glm4")` writes an ordinary checkpoint
folder (config.json, model.safetensors, tokenizer files, generation_config.json) and everything else
loads it through `glmtune.models.load`, exactly like a downloaded GLM-4-9B-chat-hf folder.
Deterministic: same seed and corpus -> same tokenizer and weights; cached by a content hash.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from glmtune.utils.io import atomic_dir, cache_root  # noqa: F401  (cache_root: imported from here elsewhere)

# GLM-4's special tokens, in the order of the real tokenizer (ids differ: our vocabulary is tiny).
GLM4_SPECIAL_TOKENS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
]

# The GLM-4-9B-chat(-hf) template without tool blocks: a turn is `<|role|>\n content`; an assistant
# turn is closed by the next role token, or by <|endoftext|> at the end of a training sample.
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for m in messages %}"
    "{% if m['role'] in ['system', 'user', 'assistant', 'observation'] %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + m['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_SHAPES = {
    # name: (architecture, config kwargs)
    "glm4": ("Glm4ForCausalLM", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
    "glm": ("GlmForCausalLM", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
    "llama": ("LlamaForCausalLM", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
}
TOKENIZER_VOCAB = 4096
SEED = 1234
BUILD_VERSION = "1"


def _corpus() -> str:
    """The generic corpus plus the text each registered task wants tokenized compactly (its prompts)."""
    from glmtune.registry import tokenizer_texts

    assets = resources.files("glmtune") / "assets"
    return "\n".join([(assets / "tiny_corpus.txt").read_text("utf-8"), *tokenizer_texts()])


def train_tokenizer(corpus: str):
    """Byte-level BPE trained on `corpus`, wrapped as a transformers fast tokenizer with GLM-4 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=GLM4_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat short lines so frequent CJK byte pairs merge into whole characters.
    tok.train_from_iterator([line for line in corpus.splitlines() if line.strip()] * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=GLM4_SPECIAL_TOKENS[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = GLM4_CHAT_TEMPLATE
    return fast


def build_tiny(name: str, out: Path) -> None:
    import torch
    import transformers
    from transformers import GenerationConfig

    arch, shape = TINY_SHAPES[name]
    tok = train_tokenizer(_corpus())
    vocab = ((len(tok) + 63) // 64) * 64  # pad like real checkpoints do
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    cfg_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    cfg = cfg_cls(vocab_size=vocab, max_position_embeddings=8192, pad_token_id=stops[0], eos_token_id=stops,
                  bos_token_id=None, tie_word_embeddings=False, **shape)
    torch.manual_seed(SEED)
    model = getattr(transformers, arch)(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=stops, pad_token_id=stops[0], do_sample=False).save_pretrained(out)
    (out / "glmtune_tiny.json").write_text(json.dumps({"name": name, "arch": arch, "version": BUILD_VERSION}))


def ensure_tiny(name: str = "glm4") -> Path:
    """Return the folder of tiny model `name`, building it once (atomically) if it is not cached."""
    if name not in TINY_SHAPES:
        from glmtune.errors import InputError

        raise InputError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_SHAPES)}")
    key = hashlib.sha256((_corpus() + json.dumps(TINY_SHAPES[name]) + BUILD_VERSION).encode()).hexdigest()[:12]
    folder = cache_root() / "tiny" / f"{name}-{key}"
    if not (folder / "glmtune_tiny.json").exists():
        with atomic_dir(folder) as staging:
            build_tiny(name, staging)
    return folder
