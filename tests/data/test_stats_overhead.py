"""`data stats` template overhead: the tokens one user/assistant exchange costs beyond its text, with the real
templates (GLM-4's skips turns whose content is empty, so an empty probe exchange under-counts)."""

from pathlib import Path

import pytest

from glmtune.data.formats import Conversation, Source
from glmtune.data.render import Renderer
from glmtune.data.stats import compute_stats
from glmtune.models.families import family_of
from glmtune.models.load import load_tokenizer, stop_token_ids

REAL = Path(__file__).resolve().parents[1] / "assets" / "real"


@pytest.mark.parametrize("folder,expected", [
    # [gMASK] <sop> <|user|> \n | <|assistant|> \n | <|user|> (the closing token training appends)
    ("glm-4-9b-chat", ["[gMASK]", "<sop>", "<|user|>", "\n", "<|assistant|>", "\n", "<|user|>"]),
    # [gMASK] sop <|user|> ▁ \n | <|assistant|> ▁ \n | </s>
    ("chatglm3-6b", ["[gMASK]", "sop", "<|user|>", "▁", "<0x0A>", "<|assistant|>", "▁", "<0x0A>", "</s>"]),
])
def test_template_overhead_counts_every_template_token(folder, expected):
    tok = load_tokenizer(REAL / folder)
    r = Renderer(tok, stop_token_ids(tok, family_of("chatglm")))
    conv = Conversation([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好的"}], Source("f", 1))
    st = compute_stats([conv], r)
    assert st.template_overhead == len(expected)
    # and it is what a real sample pays on top of its text
    text = len(tok.encode("你好", add_special_tokens=False)) + len(tok.encode("好的", add_special_tokens=False))
    assert st.total[0] - text == st.template_overhead
