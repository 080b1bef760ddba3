"""Each reader on good and bad records, with the exact file:line: field messages users see."""

import json

import pytest

from glmtune.config.schema import ColumnMap
from glmtune.data.formats import read_file


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                 encoding="utf-8")
    return p


def roles(conv):
    return [m["role"] for m in conv.messages]


def test_messages_with_system(tmp_path):
    p = write(tmp_path, "m.jsonl", [{"messages": [{"role": "system", "content": "评分"}, {"role": "user", "content": "读"},
                                                  {"role": "assistant", "content": "语速:5"}]}])
    convs, issues = read_file(p)
    assert issues == []
    assert roles(convs[0]) == ["system", "user", "assistant"]
    assert convs[0].messages[2]["content"] == "语速:5"
    assert str(convs[0].source) == f"{p}:1"


def test_chatglm3_conversations_and_sharegpt(tmp_path):
    p = write(tmp_path, "c.jsonl", [
        {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ])
    convs, issues = read_file(p)
    assert issues == []
    assert [c.meta["format"] for c in convs] == ["conversations", "sharegpt"]
    assert roles(convs[1]) == ["system", "user", "assistant"]


def test_alpaca_with_history_and_input(tmp_path):
    p = write(tmp_path, "a.jsonl", [{"instruction": "翻译", "input": "cat", "output": "猫", "system": "S",
                                     "history": [["你好", "您好"]]}])
    convs, issues = read_file(p)
    assert issues == []
    assert [(m["role"], m["content"]) for m in convs[0].messages] == [
        ("system", "S"), ("user", "你好"), ("assistant", "您好"), ("user", "翻译\ncat"), ("assistant", "猫")]


def test_column_mapped_prompt_response_history(tmp_path):
    p = write(tmp_path, "col.jsonl", [{"content": "q2", "summary": "a2", "hist": [["q1", "a1"]]}])
    cm = ColumnMap(prompt="content", response="summary", history="hist")
    convs, issues = read_file(p, "columns", cm)
    assert issues == []
    assert [m["content"] for m in convs[0].messages] == ["q1", "a1", "q2", "a2"]


def test_json_array_file(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    convs, issues = read_file(p)
    assert len(convs) == 1
    assert [str(i) for i in issues] == [f"{p}:2: <record>: unrecognised format: expected messages, conversations, "
                                        "instruction/output or prompt/response keys"]


def test_every_bad_record_named_with_file_line_field(tmp_path):
    p = write(tmp_path, "bad.jsonl", [
        '{"messages": [',                                                                   # 1 bad JSON
        {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 2 role
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},     # 3 empty
        {"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]},     # 4 order
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]},       # 5 type
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},  # 6 good
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},                                       # 8 two users
    ])
    convs, issues = read_file(p)
    assert len(convs) == 1 and convs[0].source.line == 6
    got = [str(i) for i in issues]
    assert got[0].startswith(f"{p}:1: <json>: bad JSON:")
    assert got[1:] == [
        f"{p}:2: messages[0].role: unknown role 'narrator'; expected one of ['system', 'user', 'assistant', 'observation']",
        f"{p}:3: messages[1].content: empty assistant turn",
        f"{p}:4: messages[0].content: wrong turn order: assistant turn without a user turn before it",
        f"{p}:4: messages[1].content: conversation must end with an assistant turn",
        f"{p}:5: messages[0].content: content must be a string, got int",
        f"{p}:7: messages[1].content: wrong turn order: two user turns in a row",
    ]


def test_missing_alpaca_and_column_fields(tmp_path):
    p = write(tmp_path, "m.jsonl", [{"instruction": "x", "output": None, "foo": 1}, {"prompt": "q"}])
    convs, issues = read_file(p)
    assert convs == []
    assert [str(i) for i in issues] == [f"{p}:1: output: content must be a string, got NoneType",
                                        f"{p}:2: response: missing"]


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca"])
def test_forced_format_mismatch_is_reported(tmp_path, fmt):
    p = write(tmp_path, "x.jsonl", [{"prompt": "q", "response": "a"}])
    convs, issues = read_file(p, fmt)
    assert convs == [] and issues and all(i.source.line == 1 for i in issues)
