"""Fixtures for the method tests: a memorisable set (helpers live in method_helpers.py)."""

import json

import pytest

# Four samples of different lengths (so batch 4 pads), short enough to memorise in a few steps.
MEMO_ROWS = [
    {"messages": [{"role": "user", "content": "语速3停顿2"}, {"role": "assistant", "content": "语速:3;停顿:2;评语:好"}]},
    {"messages": [{"role": "system", "content": "你是老师"}, {"role": "user", "content": "读得怎么样"},
                  {"role": "assistant", "content": "很好"}]},
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好,请朗读下面的句子。"}]},
    {"messages": [{"role": "user", "content": "停顿太多了吗"}, {"role": "assistant", "content": "停顿:4"}]},
]


@pytest.fixture(scope="session")
def memo_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("memo") / "train.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MEMO_ROWS), encoding="utf-8")
    return p
