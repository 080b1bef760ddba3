"""Very long conversations (issue 19 row 6): rendering and truncation cost linear in length, same result.

Cost is counted as messages passed to the chat template (no timings here; benchmarks/long_conversation.py
times `glmtune train` on 10,000 turns).
"""

import random

import pytest

from glmtune.data import render as R
from glmtune.data.formats import Conversation, Source
from glmtune.data.render import IGNORE, Renderer, chat_ids, render_with_policy
from glmtune.models.families import family_of
from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids


def long_chat(n: int, system: bool = True, tools: bool = False, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    msgs = [{"role": "system", "content": "你是老师"}] if system else []
    for i in range(n):
        msgs.append({"role": "user", "content": f"问题{i}" * rng.randint(1, 3)})
        if tools and rng.random() < 0.3:
            msgs += [{"role": "assistant", "content": "调用工具"}, {"role": "observation", "content": f"结果{i}"}]
        msgs.append({"role": "assistant", "content": f"答{i}" * rng.randint(1, 3)})
    return msgs


class Counting:
    """Counts the messages a tokenizer's chat template is asked to render."""

    def __init__(self, tok):
        self.tok, self.messages = tok, 0
        self._real = tok.apply_chat_template

    def __enter__(self):
        def counted(conversation, *a, **kw):
            self.messages += len(conversation)
            return self._real(conversation, *a, **kw)

        self.tok.apply_chat_template = counted
        return self

    def __exit__(self, *exc):
        del self.tok.apply_chat_template


def prefix_render(r: Renderer, msgs):
    """The reference: every answer located by rendering the conversation's prefixes."""
    old = R.PREFIX_MAX
    R.PREFIX_MAX = 10**9
    try:
        return r._render(msgs)
    finally:
        R.PREFIX_MAX = old


@pytest.fixture
def renderer(tiny_glm_any):
    tok = load_tokenizer(tiny_glm_any)
    return Renderer(tok, stop_token_ids(tok, family_of(model_type_of(tiny_glm_any))))


@pytest.mark.parametrize("system, tools, loss_on", [(True, False, "all_assistant"), (False, True, "all_assistant"),
                                                    (True, True, "last_turn")])
def test_windowed_render_equals_prefix_render(renderer, system, tools, loss_on):
    r = Renderer(renderer.tokenizer, renderer.stop_ids, loss_on)
    for seed in range(3):
        msgs = long_chat(25 + seed * 7, system, tools, seed)
        assert r._render(msgs) == prefix_render(r, msgs)


def test_template_whose_turns_are_not_independent_falls_back_to_prefixes(tiny_glm4):
    tok = load_tokenizer(tiny_glm4)
    # turn numbers make each turn depend on its position: still prefix-stable, but windows cannot see it
    tok.chat_template = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>{{ loop.index }}\n{{ m['content'] }}"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    r = Renderer(tok, [tok.eos_token_id])
    msgs = long_chat(20)
    full = chat_ids(tok, msgs)
    assert R._windowed_spans(tok, msgs, full, [i for i, m in enumerate(msgs) if m["role"] == "assistant"]) is None
    assert r._render(msgs) == prefix_render(r, msgs)


def test_render_and_truncation_cost_is_linear_in_turns(tiny_glm4):
    tok = load_tokenizer(tiny_glm4)
    cost = {}
    for n in (200, 400):
        conv = Conversation(long_chat(n), Source("d.jsonl", 1))
        with Counting(tok) as c:
            ex, skip = render_with_policy(conv, Renderer(tok, [tok.eos_token_id]), 256, "truncate")
        assert skip.kind == "truncated" and len(ex) <= 256
        cost[n] = c.messages
    # quadratic cost (prefix renders, one re-render per dropped turn) would give a ratio near 4
    assert cost[400] / cost[200] < 2.5, cost


def test_long_truncation_equals_dropping_one_turn_at_a_time(tiny_glm4):
    tok = load_tokenizer(tiny_glm4)
    r = Renderer(tok, [tok.eos_token_id])
    msgs = long_chat(60, tools=True)
    conv = Conversation(msgs, Source("d.jsonl", 7))
    ex, skip = render_with_policy(conv, r, 200, "truncate")
    # the reference rule, one exchange at a time from the oldest, keeping the system turn
    kept, lost = list(msgs), 0
    while len(chat_ids(tok, kept)) > 200:
        nxt = next(i for i in range(2, len(kept)) if kept[i]["role"] == "user")
        kept, lost = kept[:1] + kept[nxt:], lost + 1
    ids, labels = r.render(kept)
    assert (ex.input_ids, ex.labels) == (ids, labels) and skip.turns_lost == ex.turns_lost == lost
    full_ids, full_labels = r.render(msgs)
    assert skip.tokens_before == len(full_ids) and skip.tokens_after == len(ids)
    assert skip.supervised_lost == sum(x != IGNORE for x in full_labels) - sum(x != IGNORE for x in labels)
