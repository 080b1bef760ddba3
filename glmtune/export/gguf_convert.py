"""Run llama.cpp's `convert_hf_to_gguf.py` (vendored in `llama_cpp_convert/`) on a merged HF folder.

    python -m glmtune.export.gguf_convert --stop-ids 0,7,9 MODEL_DIR --outfile X.gguf --outtype f16

Runs as its own process: the vendored `gguf` (llama.cpp's, same version as the converter) goes first on
`sys.path` there and never shadows the PyPI `gguf` in the glmtune process. The converter itself is
used unmodified; three fixes are applied around it, each checked by `glmtune export --format gguf`'s
verification against the HF model (logits, tokens, stop ids loaded back by llama.cpp):

1. Stop ids. llama.cpp ends generation on its "end of generation" set: the GGUF's eos, eot and eom
   token ids plus a list of token names. For GLM the converter sets eos=<|endoftext|>, eot=<|user|>,
   and nothing for <|observation|> (the token a tool call ends with), so a GGUF model would run on
   past a function call. Every stop id glmtune trains and serves with that is not yet one of
   eos/eot/eom is written into the next free of eot, eom.
2. HF `GlmForCausalLM` (glm-4-9b-chat-hf) goes through llama.cpp's ChatGLM converter, which reads the
   remote-code config names only (`layernorm_epsilon`, `rope_ratio`) and otherwise writes eps 1e-5 and
   rope base 10000; the HF config has `rms_norm_eps` 1.5625e-07 and rope_theta 10000*500. Without the
   fix every converted glm-4-9b-chat-hf has the wrong rope base. The HF names are mapped onto the
   remote-code ones before the converter reads them.
3. A BPE tokenizer whose pre-tokenizer is exactly GPT-2's (byte-level, GPT-2 regex, no normaliser),
   as glmtune's tiny models have, is not in llama.cpp's table of known tokenizer hashes (that table
   only lists published models); it is written as llama.cpp's "gpt-2" pre-tokenizer. Any other unknown
   tokenizer still stops with llama.cpp's own error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "llama_cpp_convert"


def _is_plain_gpt2_bytelevel(dir_model: Path) -> bool:
    path = Path(dir_model) / "tokenizer.json"
    if not path.exists():
        return False
    tj = json.loads(path.read_text(encoding="utf-8"))
    pre = tj.get("pre_tokenizer") or {}
    return (tj.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False) and (tj.get("model") or {}).get("type") == "BPE")


def _install_fixes(stop_ids: list[int]) -> None:
    import gguf
    from conversion import base
    from conversion.chatglm import ChatGLMModel

    text_model = base.TextModel
    orig_pre = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):  # fix 3
        try:
            return orig_pre(self, tokenizer)
        except NotImplementedError:
            if _is_plain_gpt2_bytelevel(self.dir_model):
                base.logger.info("glmtune: unknown tokenizer hash, but its pre-tokenizer is GPT-2's: 'gpt-2'")
                return "gpt-2"
            raise

    text_model.get_vocab_base_pre = get_vocab_base_pre

    orig_glm_params = ChatGLMModel.set_gguf_parameters

    def set_gguf_parameters(self):  # fix 2
        hp = self.hparams
        if "layernorm_epsilon" not in hp and "rms_norm_eps" in hp:
            hp["layernorm_epsilon"] = hp["rms_norm_eps"]
        theta = self.rope_parameters.get("rope_theta", hp.get("rope_theta"))
        if "rope_ratio" not in hp and theta is not None:
            hp["rope_ratio"] = float(theta) / 10000
        orig_glm_params(self)

    ChatGLMModel.set_gguf_parameters = set_gguf_parameters

    def after_vocab(self):  # fix 1
        kv = self.gguf_writer.kv_data[0]
        keys = {"eos": gguf.Keys.Tokenizer.EOS_ID, "eot": gguf.Keys.Tokenizer.EOT_ID,
                "eom": gguf.Keys.Tokenizer.EOM_ID}
        have = {k: kv[key].value for k, key in keys.items() if key in kv}
        missing = [i for i in stop_ids if i not in have.values()]
        for slot in ("eot", "eom"):
            if missing and slot not in have:
                tok = missing.pop(0)
                getattr(self.gguf_writer, f"add_{slot}_token_id")(tok)
                base.logger.info(f"glmtune: stop id {tok} written as {slot}")
        if missing:  # verification checks llama.cpp still treats these as end-of-generation (by name)
            base.logger.info(f"glmtune: no free eos/eot/eom slot for stop ids {missing}")

    # set_vocab is defined per architecture; main() wraps whichever class the converter picks.
    return after_vocab


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    stop_ids: list[int] = []
    if "--stop-ids" in argv:
        i = argv.index("--stop-ids")
        stop_ids = [int(x) for x in argv[i + 1].split(",") if x]
        del argv[i:i + 2]
    sys.path[:0] = [str(VENDOR), str(VENDOR / "gguf-py")]
    import convert_hf_to_gguf as cv  # noqa: E402  (llama.cpp's script, unmodified)

    after_vocab = _install_fixes(stop_ids)
    orig_get_class = cv.get_model_class

    def get_model_class(name, mmproj=False):
        cls = orig_get_class(name, mmproj=mmproj)
        orig = cls.set_vocab

        def set_vocab(self):
            orig(self)
            after_vocab(self)

        return type(cls.__name__, (cls,), {"set_vocab": set_vocab, "model_arch": cls.model_arch})

    cv.get_model_class = get_model_class
    sys.argv = ["convert_hf_to_gguf.py", *argv]
    cv.main()


if __name__ == "__main__":
    main()
