"""Hostile data files (issue 19 rows 1-5, 7): every bad line reported as file:line, every good line still read."""

import json

import pytest

from glmtune.config.load import ConfigError
from glmtune.data.formats import DataError, read_file

GOOD = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好"}]}


def line(rec) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def by_line(issues):
    return {i.source.line: str(i) for i in issues}


def test_gbk_line_is_reported_by_itself_and_the_rest_is_read(tmp_path):
    gbk = json.dumps(GOOD, ensure_ascii=False).encode("gbk")
    f = write_lines(tmp_path / "d.jsonl", [line(GOOD), gbk, line(GOOD), b'{"x": "caf\xe9 \xff"}', line(GOOD)])
    convs, issues = read_file(f)
    assert [c.source.line for c in convs] == [1, 3, 5]
    got = by_line(issues)
    assert got[2] == f"{f}:2: not UTF-8 (looks like GBK?): re-save the file as UTF-8 (e.g. iconv -f GBK -t UTF-8)"
    assert got[4].startswith(f"{f}:4: not UTF-8 (byte 0x") and "GBK" not in got[4]
    assert len(issues) == 2


def test_whole_file_in_gbk_reports_every_line(tmp_path):
    f = tmp_path / "gbk.jsonl"
    f.write_bytes(b"\n".join(json.dumps(GOOD, ensure_ascii=False).encode("gbk") for _ in range(3)) + b"\n")
    convs, issues = read_file(f)
    assert convs == [] and [i.source.line for i in issues] == [1, 2, 3]
    assert all("looks like GBK?" in str(i) for i in issues)


def test_json_array_file_not_utf8_names_its_line(tmp_path):
    f = tmp_path / "d.json"
    f.write_bytes(b"[\n" + line(GOOD) + b",\n" + json.dumps(GOOD, ensure_ascii=False).encode("gbk") + b"\n]\n")
    convs, issues = read_file(f)
    assert convs == [] and by_line(issues) == {3: f"{f}:3: not UTF-8 (looks like GBK?): re-save the file as UTF-8 "
                                                   "(e.g. iconv -f GBK -t UTF-8)"}


@pytest.mark.parametrize("turn, field", [
    ({"role": ["user"], "content": "x"}, "messages[0].role"),
    ({"role": {"r": 1}, "content": "x"}, "messages[0].role"),
    ({"role": None, "content": "x"}, "messages[0].role"),
])
def test_role_that_is_not_a_string_is_a_line_error(tmp_path, turn, field):
    bad = {"messages": [turn, {"role": "assistant", "content": "y"}]}
    f = write_lines(tmp_path / "d.jsonl", [line(GOOD), line(bad), line(GOOD)])
    convs, issues = read_file(f)
    assert [c.source.line for c in convs] == [1, 3]
    assert [str(i) for i in issues] == [f"{f}:2: {field}: role must be a string, got "
                                        f"{'nothing' if turn['role'] is None else type(turn['role']).__name__}"]


def test_sharegpt_from_list_is_a_line_error(tmp_path):
    bad = {"conversations": [{"from": ["human"], "value": "q"}, {"from": "gpt", "value": "a"}]}
    f = write_lines(tmp_path / "d.jsonl", [line(bad)])
    _, issues = read_file(f)
    assert [str(i) for i in issues] == [f"{f}:1: conversations[0].from: role must be a string, got list"]


def test_deeply_nested_json_is_a_line_error(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [line(GOOD), b"[" * 100_000 + b"]" * 100_000, line(GOOD),
                                           b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"])
    convs, issues = read_file(f)
    assert [c.source.line for c in convs] == [1, 3]
    assert by_line(issues) == {2: f"{f}:2: <json>: bad JSON: nested too deeply",
                               4: f"{f}:4: <json>: bad JSON: nested too deeply"}


def test_integer_too_long_to_convert_is_a_line_error(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [b'{"id": ' + b"9" * 5000 + b"}", line(GOOD)])
    convs, issues = read_file(f)
    assert len(convs) == 1 and issues[0].source.line == 1 and "bad JSON" in str(issues[0])


def test_lone_surrogate_is_caught_by_the_check(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [
        b'{"messages": [{"role": "user", "content": "x\\ud800y"}, {"role": "assistant", "content": "ok"}]}',
        b'{"id": "\\udfff", "instruction": "q", "output": "a"}',
        b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "ok"}]}',
    ])
    convs, issues = read_file(f)
    assert [c.source.line for c in convs] == [3]  # a proper surrogate pair (an emoji) is fine
    assert [str(i) for i in issues] == [
        f"{f}:1: messages[0].content: lone surrogate '\\ud800' at character 1: not valid Unicode text",
        f"{f}:2: id: lone surrogate '\\udfff' at character 0: not valid Unicode text"]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf", b"[]"])
def test_empty_or_blank_file_says_it_has_no_records(tmp_path, content):
    f = tmp_path / ("d.json" if content == b"[]" else "d.jsonl")
    f.write_bytes(content)
    convs, issues = read_file(f)
    assert convs == [] and [str(i) for i in issues] == [f"{f}: no records (the file is empty or blank)"]


def test_unicode_line_separators_inside_strings_are_not_line_breaks(tmp_path):
    recs = [{"messages": [{"role": "user", "content": f"a{sep}b"}, {"role": "assistant", "content": f"c{sep}d"}]}
            for sep in ("\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c")]
    f = write_lines(tmp_path / "d.jsonl", [line(r) for r in recs] + [b"{oops", b"\r", line(GOOD) + b"\r"])
    convs, issues = read_file(f)
    assert [c.source.line for c in convs] == [1, 2, 3, 4, 5, 6, 7, 8, 11]
    assert [c.messages[0]["content"] for c in convs[:8]] == [r["messages"][0]["content"] for r in recs]
    assert [str(i) for i in issues] == [f"{f}:9: <json>: bad JSON: Expecting property name enclosed in double "
                                        "quotes (column 2)"]


def test_missing_file_or_folder_is_one_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        read_file(tmp_path / "nope.jsonl")
    assert str(err.value) == f"{tmp_path / 'nope.jsonl'}: data file not found"
    with pytest.raises(DataError, match="is a folder, not a data file"):
        read_file(tmp_path)
    assert isinstance(err.value, ConfigError)  # the CLI prints ConfigErrors as one line, no traceback


def test_alpaca_input_that_is_not_text_is_reported_not_dropped(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [line({"instruction": "翻译", "input": ["cat"], "output": "猫"})])
    _, issues = read_file(f)
    assert [str(i) for i in issues] == [f"{f}:1: input: must be a string, got list"]


def test_unknown_format_is_a_config_error(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [line(GOOD)])
    with pytest.raises(ConfigError, match="unknown data format 'jsonl'"):
        read_file(f, "jsonl")
