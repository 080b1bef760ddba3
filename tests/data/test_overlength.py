"""Over-length policy: drop | truncate | error — every affected sample counted; template/stop tokens never cut."""

import json

import pytest

from glmtune.config import load_config
from glmtune.data.dataset import prepare
from glmtune.data.formats import Conversation, DataError, Source
from glmtune.data.render import IGNORE, Renderer, render_with_policy
from glmtune.models.load import load_tokenizer


@pytest.fixture
def tok(tiny_glm4):
    return load_tokenizer(tiny_glm4)


def conv(user, answer="语速:5;停顿:3;评语:好", system="你是老师", line=1, history=()):
    msgs = [{"role": "system", "content": system}]
    for q, a in history:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Conversation(msgs, Source("d.jsonl", line))


def test_truncate_keeps_template_answer_and_stop(tok):
    r = Renderer(tok, [tok.eos_token_id])
    c = conv("开头的指令。" + "数据" * 300 + "结尾的指令。")
    full, _ = r.render(c.messages)
    ex, skip = render_with_policy(c, r, 120, "truncate")
    assert skip.kind == "truncated" and skip.tokens_before == len(full) and skip.tokens_after == len(ex) <= 120
    text = tok.decode(ex.input_ids)
    assert text.startswith("[gMASK]<sop><|system|>\n你是老师<|user|>\n开头")
    assert "结尾的指令。<|assistant|>\n语速:5;停顿:3;评语:好<|user|>" in text
    sup = tok.decode([t for t in ex.labels if t != IGNORE])
    assert sup == "\n语速:5;停顿:3;评语:好<|user|>"
    assert skip.supervised_lost == 0


def test_truncate_drops_oldest_turns_first(tok):
    r = Renderer(tok, [tok.eos_token_id])
    c = conv("最后的问题", history=[("很早的问题" * 20, "很早的回答" * 20), ("问二", "答二")])
    ex, skip = render_with_policy(c, r, 60, "truncate")
    assert ex is not None and skip.turns_lost >= 1
    assert "很早" not in tok.decode(ex.input_ids) and "最后的问题" in tok.decode(ex.input_ids)


def test_drop_and_error_policies(tok):
    r = Renderer(tok, [tok.eos_token_id])
    c = conv("很长" * 200)
    ex, skip = render_with_policy(c, r, 64, "drop")
    assert ex is None and skip.kind == "dropped" and "> cutoff_len 64" in skip.reason


def test_three_bad_and_two_overlength_all_reported(tmp_path, tiny_glm4):
    good = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "语速:5"}]}
    long = {"messages": [{"role": "user", "content": "长" * 400}, {"role": "assistant", "content": "语速:3"}]}
    lines = [good, "{not json", long, {"messages": [{"role": "user", "content": "x"}]}, good,
             {"messages": [{"role": "bot?", "content": "x"}]}, long, good, good]
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    base = [f"data.train={p}", "data.val_size=0", "data.cutoff_len=64", f"model.path={tiny_glm4}"]

    with pytest.raises(DataError) as err:  # default: bad records stop training, each named
        prepare(load_config(None, base), load_tokenizer(tiny_glm4), [0])
    assert [i.source.line for i in err.value.issues] == [2, 4, 6]

    cfg = load_config(None, base + ["data.on_bad_record=skip", "data.overlength=drop"])
    data = prepare(cfg, load_tokenizer(tiny_glm4), [0])
    s = data.report.summary()
    assert (s["samples_seen"], s["samples_used"], s["bad_records_skipped"], s["dropped_overlength"]) == (9, 4, 3, 2)
    assert sorted(int(k.source.rsplit(":", 1)[1]) for k in data.report.skips) == [2, 3, 4, 6, 7]

    cfg = load_config(None, base + ["data.on_bad_record=skip", "data.overlength=truncate"])
    data = prepare(cfg, load_tokenizer(tiny_glm4), [0])
    s = data.report.summary()
    assert (s["samples_used"], s["truncated"], s["dropped_overlength"]) == (6, 2, 0)
    assert all(len(e) <= 64 for e in data.train)

    cfg = load_config(None, base + ["data.on_bad_record=skip", "data.overlength=error"])
    with pytest.raises(DataError) as err:
        prepare(cfg, load_tokenizer(tiny_glm4), [0])
    assert [i.source.line for i in err.value.issues] == [3, 7]
