"""Rendering uses the tokenizer's own chat template; only answers (and their closing token) are supervised."""

import pytest

from glmtune.data.formats import Conversation, Source
from glmtune.data.render import IGNORE, Renderer, chat_ids
from glmtune.models.families import family_of
from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids

MULTI = [
    {"role": "system", "content": "你是一个给留学生中文口语打分的老师"},
    {"role": "user", "content": "第一个问题：你好"},
    {"role": "assistant", "content": "语速:5;停顿:3"},
    {"role": "user", "content": "second question"},
    {"role": "assistant", "content": "评语:继续努力"},
]


@pytest.fixture
def renderer(tiny_glm_any):
    tok = load_tokenizer(tiny_glm_any)
    return Renderer(tok, stop_token_ids(tok, family_of(model_type_of(tiny_glm_any))))


def test_stop_ids_put_eos_first(renderer):
    tok = renderer.tokenizer
    assert renderer.stop_ids[0] == tok.eos_token_id
    assert set(tok.convert_ids_to_tokens(renderer.stop_ids)) == {"<|endoftext|>", "<|user|>", "<|observation|>"}


def test_ids_equal_apply_chat_template_plus_closing_user_token(renderer):
    # GLM-4's official finetune.py closes a sample with <|user|> (what the template writes after an answer).
    ids, labels = renderer.render(MULTI)
    assert ids == chat_ids(renderer.tokenizer, MULTI) + [renderer.tokenizer.convert_tokens_to_ids("<|user|>")]
    assert len(labels) == len(ids)


def test_prompt_ids_equal_generation_prompt(renderer):
    assert renderer.prompt_ids(MULTI[:4]) == renderer.tokenizer.apply_chat_template(
        MULTI[:4], tokenize=True, add_generation_prompt=True)["input_ids"]


def test_only_answers_and_turn_closers_are_supervised(renderer):
    tok = renderer.tokenizer
    ids, labels = renderer.render(MULTI)
    sup = [i for i, x in enumerate(labels) if x != IGNORE]
    text = tok.decode([ids[i] for i in sup])
    # Both answers, each closed by the <|user|> that follows it (appended after the last, as GLM-4's finetune.py).
    assert text == "\n语速:5;停顿:3<|user|>\n评语:继续努力<|user|>"
    # Nothing of the system or user turns is learned.
    for m in MULTI:
        if m["role"] != "assistant":
            assert m["content"] not in text


def test_closing_tokens_are_stop_tokens(renderer):
    ids, labels = renderer.render(MULTI)
    assistant_tag = renderer.tokenizer.convert_tokens_to_ids("<|assistant|>")
    # each supervised span ends on a token generation stops at
    spans, cur = [], []
    for i, x in enumerate(labels):
        if x != IGNORE:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    assert len(spans) == 2
    for span in spans:
        assert ids[span[-1]] in renderer.stop_ids
        assert ids[span[0] - 1] == assistant_tag


def test_last_turn_only(renderer):
    r = Renderer(renderer.tokenizer, renderer.stop_ids, loss_on="last_turn")
    ids, labels = r.render(MULTI)
    text = r.tokenizer.decode([t for t in labels if t != IGNORE])
    assert text == "\n评语:继续努力<|user|>"


def test_glm_and_glm4_render_identically(tiny_glm4, tiny_glm):
    a = Renderer(load_tokenizer(tiny_glm4), [0]).render(MULTI)
    b = Renderer(load_tokenizer(tiny_glm), [0]).render(MULTI)
    assert a == b


def test_non_prefix_stable_template_is_refused(renderer):
    tok = renderer.tokenizer
    saved = tok.chat_template
    # A template that renders the last message differently breaks answer location: must raise, not guess.
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<|{{ m['role'] }}|>LAST{{ m['content'] }}"
                         "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        with pytest.raises(ValueError, match="prefix-stable"):
            renderer.render(MULTI)
    finally:
        tok.chat_template = saved


def test_render_from_conversation_source(renderer):
    conv = Conversation(MULTI[1:3], Source("f.jsonl", 3))
    ids, labels = renderer.render(conv.messages)
    assert ids[-1] == renderer.tokenizer.convert_tokens_to_ids("<|user|>") and labels[-1] == ids[-1]
