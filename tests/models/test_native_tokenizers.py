"""glmtune's native tokenizers encode text exactly like the official encoders they replace: GLM-4's tiktoken
`Encoding` (what ChatGLM4Tokenizer calls) and ChatGLM3/ChatGLM-6B's SentencePiece (after ChatGLM-6B's own
pre-processing), on the bundled Chinese/English texts and on random mixes of CJK, emoji, full-width forms,
whitespace runs, tabs, newlines and special-token look-alikes."""

import base64
import random
from importlib import resources
from pathlib import Path

import pytest

from glmtune.models.load import load_tokenizer
from glmtune.models.native_tokenizers import GLM4_PATTERN

REAL = Path(__file__).resolve().parents[1] / "assets" / "real"


@pytest.fixture(scope="module")
def texts():
    assets = resources.files("glmtune") / "assets"
    out = []
    for name in ("tiny_corpus.txt", "oral_rubric_zh.txt", "oral_passages.txt", "forgetting_general.jsonl"):
        out += [line for line in (assets / name).read_text("utf-8").splitlines() if line.strip()]
    rnd = random.Random(0)
    alphabet = list("abc XYZ 你好世界\n\t，。！？😀　ＡＢ123  ‘’“”…—<>|[]") + ["<|user|>", "[gMASK]", "sop", "    "]
    out += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 60))) for _ in range(1500)]
    return out


def native(folder):
    tok = load_tokenizer(REAL / folder)
    return lambda s: tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_glm4_equals_tiktoken(texts):
    import tiktoken

    lines = (REAL / "glm-4-9b-chat" / "tokenizer.model").read_text().splitlines()
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in lines if line)}
    enc = tiktoken.Encoding("glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
    mine = native("glm-4-9b-chat")
    assert [t for t in texts if enc.encode(t, disallowed_special=()) != mine(t)] == []


def test_chatglm3_equals_sentencepiece(texts):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(REAL / "chatglm3-6b" / "tokenizer.model"))
    mine = native("chatglm3-6b")
    assert [t for t in texts if sp.encode(t) != mine(t)] == []


def test_chatglm6b_equals_sentencepiece_up_to_ties(texts):
    """ChatGLM-6B's vocabulary is a unigram model: a run of one repeated character ("好好好", "[[[") has two
    segmentations of exactly equal score ([好好, 好] / [好, 好好]) and the two Viterbi implementations break that
    tie differently. Those are the only differences: same pieces, other order, same text."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(REAL / "chatglm-6b" / "ice_text.model"))

    def official(s):  # SPTokenizer._preprocess, then SentencePiece
        s = s.replace("\n", "<n>").replace("\t", "<|tab|>")
        for i in range(80, 1, -1):
            s = s.replace(" " * i, f"<|blank_{i}|>")
        return sp.encode(s)

    mine = native("chatglm-6b")
    differ = [t for t in texts if official(t) != mine(t)]
    assert len(differ) <= len(texts) // 500
    for t in differ:
        assert sorted(official(t)) == sorted(mine(t)) and sp.decode(official(t)) == sp.decode(mine(t))
