"""ChatGLM3 answers start with the newline of `<|assistant|>\n` and SentencePiece's word-start space
(the official template renders "<|assistant|>\n Hello"): a stream must not send that space, and the pieces
of a stream must add up to exactly the non-streamed answer (no leading or trailing whitespace either)."""

import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def chatglm3_tokenizer(tmp_path_factory):
    from glmtune.models.load import load_tokenizer

    d = tmp_path_factory.mktemp("chatglm3-tok")
    for f in ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py", "config.json"):
        shutil.copy2(ASSETS / "real" / "chatglm3-6b" / f, d / f)
    return load_tokenizer(d)


@pytest.mark.parametrize("answer", ["\n Hello world", "\n Hello world \n", " 语速:3;评语:好", "\n\n  Hi"])
def test_detokenizer_stream_equals_plain_answer(chatglm3_tokenizer, answer):
    from glmtune.inference.detok import Detokenizer

    tok = chatglm3_tokenizer
    ids = tok.encode(answer, add_special_tokens=False)
    plain = tok.decode(ids, skip_special_tokens=True).strip()  # what a non-streamed answer returns
    d = Detokenizer(tok, [])
    pieces = [d.push(t)[0] for t in ids] + [d.finish(False)]
    sent = [p for p in pieces if p]
    assert sent and not sent[0][0].isspace(), sent
    assert "".join(sent) == plain
    assert d.text.strip() == plain


def test_engine_stream_equals_generate_on_chatglm3(tmp_path, monkeypatch):
    """Through HFEngine on a converted ChatGLM3 (real tokenizer): the model is steered (transformers'
    `sequence_bias`) to answer "\\n Hello\\n Hello...", the shape of every real ChatGLM3 answer."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
    from test_chatglm_converted import chatglm3_folder

    from glmtune.inference.engine import HFEngine

    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    engine = HFEngine.from_model_dir(str(chatglm3_folder(tmp_path / "c3")), trust_remote_code=True,
                                     dtype="float32")
    tok = engine.tokenizer
    nl, hello = tok.convert_tokens_to_ids("<0x0A>"), tok.convert_tokens_to_ids("▁Hello")
    engine.model.generation_config.sequence_bias = {(nl,): 100.0, (nl, hello): 200.0}
    messages = [{"role": "user", "content": "你好"}]
    plain = engine.generate([messages], max_new_tokens=6)[0].text
    pieces = list(engine.stream(messages, max_new_tokens=6))
    assert plain.startswith("Hello"), plain
    assert pieces and not pieces[0][0].isspace(), pieces
    assert "".join(pieces) == plain


@pytest.mark.parametrize("pieces, plain", [
    (["Hello", " wor", "ld\ufffd"], "Hello world"),   # the streamer flushes a cut multi-byte character last
    (["\n", "Hi ", "\ufffd", "\ufffd"], "Hi"),
    (["a\ufffdb", " c"], "a\ufffdb c"),                # inside the answer it is text the model wrote: kept
])
def test_strip_stream_drops_a_trailing_incomplete_character(pieces, plain):
    """`generate()` drops a last incomplete UTF-8 character (decode(...).rstrip("\\ufffd")); the stream of the
    same answer must add up to the same text, or a chat's history differs from what the server sends."""
    from glmtune.inference.detok import strip_stream

    assert "".join(strip_stream(pieces)) == plain


def test_engine_stream_ends_like_generate_when_the_answer_is_cut_inside_a_character(tmp_path, monkeypatch):
    """A tiny GLM-4 steered to answer with the first byte of a 3-byte character at the token limit: generate()
    drops it; the stream used to end with U+FFFD."""
    from glmtune.inference.engine import HFEngine
    from glmtune.models.tiny import ensure_tiny

    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    engine = HFEngine.from_model_dir(str(ensure_tiny("glm4")), dtype="float32")
    tok = engine.tokenizer
    byte_ids = [i for t, i in tok.get_vocab().items() if len(t) == 1 and t in "äåæçèé"]  # ByteLevel 0xE4..0xE9
    assert byte_ids, "the tiny tokenizer (byte-level BPE) has lone lead-byte tokens"
    hello = tok.encode("Hi", add_special_tokens=False)
    engine.model.generation_config.sequence_bias = {(hello[0],): 100.0, (hello[0], byte_ids[0]): 200.0}
    messages = [{"role": "user", "content": "你好"}]
    plain = engine.generate([messages], max_new_tokens=2)[0].text
    pieces = list(engine.stream(messages, max_new_tokens=2))
    assert "\ufffd" not in plain
    assert "".join(pieces) == plain, (pieces, plain)
