"""Fuzzing the data readers (issue 19): random bytes and random JSON shapes per format.

For every input: no exception escapes `read_file`, each input stays within hypothesis' per-example deadline,
and every non-blank line is either read (a conversation from that line) or reported (an issue naming it),
never both and never neither.
"""

import json
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmtune.config.schema import ColumnMap
from glmtune.data.formats import read_file

FUZZ = settings(max_examples=60, deadline=timedelta(seconds=2), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that has broken readers: line/paragraph separators, NEL, lone surrogates, CR, NUL, BOM, role tokens.
nasty = st.sampled_from(["\u2028", "\u2029", "\u0085", "\ud800", "\udfff", "\r", "\x00", "\ufeff", "<|user|>", "\n"])
text = st.one_of(st.text(max_size=12), st.lists(st.one_of(st.text(max_size=4), nasty), max_size=5).map("".join))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), text)
anything = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=12)
role = st.one_of(st.sampled_from(["system", "user", "assistant", "observation", "tool", "human", "gpt", "bot"]),
                 anything)


def turns(role_key, content_key):
    turn = st.fixed_dictionaries({role_key: role, content_key: st.one_of(text, anything)},
                                 optional={"extra": anything})
    return st.lists(st.one_of(turn, anything), max_size=6)


FORMATS = {
    "messages": st.fixed_dictionaries({"messages": st.one_of(turns("role", "content"), anything)},
                                      optional={"id": anything}),
    "conversations": st.fixed_dictionaries({"conversations": turns("role", "content")}),
    "sharegpt": st.fixed_dictionaries({"conversations": turns("from", "value")}, optional={"system": anything}),
    "alpaca": st.fixed_dictionaries({"instruction": st.one_of(text, anything), "output": st.one_of(text, anything)},
                                    optional={"input": anything, "system": anything,
                                              "history": st.one_of(st.lists(st.lists(text, max_size=3), max_size=3),
                                                                   anything)}),
    "columns": st.fixed_dictionaries({"q": st.one_of(text, anything), "a": st.one_of(text, anything)},
                                     optional={"h": anything, "s": anything}),
}
COLUMNS = ColumnMap(prompt="q", response="a", history="h", system="s")


def encode(rec, how: int) -> bytes:
    """One JSONL line: escaped ASCII, raw UTF-8, or raw with surrogates passed through (invalid UTF-8)."""
    raw = json.dumps(rec, ensure_ascii=how == 0)
    if how == 1 and any("\ud800" <= ch <= "\udfff" for ch in raw):
        how = 2  # raw UTF-8 cannot hold a lone surrogate
    return raw.encode("utf-8", "surrogatepass" if how == 2 else "strict") if how else raw.encode("ascii")


def check_every_line_accounted(path, data: bytes, fmt: str, columns=None):
    convs, issues = read_file(path, fmt, columns)
    lines = {i for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()}
    read = [c.source.line for c in convs]
    reported = {i.source.line for i in issues}
    assert len(read) == len(set(read)), "a line read twice"
    assert not set(read) & reported, "a line both read and reported"
    if lines:
        assert set(read) | reported == lines, "a line neither read nor reported"
    else:
        assert read == [] and [i.source.line for i in issues] == [0]  # "no records"
    for c in convs:  # what was read is usable downstream: text that encodes, a known role
        for m in c.messages:
            assert isinstance(m["content"], str)
            m["content"].encode("utf-8")
            assert m["role"] in ("system", "user", "assistant", "observation")


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "d.jsonl"
    path.write_bytes(data)
    check_every_line_accounted(path, data, "auto")


@FUZZ
@given(data=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"{", b"[" * 3000, b'"\\ud800"', b"\xef\xbb\xbf{}",
                                                                        b"1" * 5000, b"\r", b"\xc4\xe3\xba\xc3"])),
                     max_size=8).map(b"\n".join))
def test_random_lines(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "d.jsonl"
    path.write_bytes(data)
    check_every_line_accounted(path, data, "auto")


def _shapes(fmt):
    @FUZZ
    @given(recs=st.lists(st.tuples(st.one_of(FORMATS[fmt], anything), st.integers(0, 2)), min_size=1, max_size=6),
           declared=st.booleans())
    def test(tmp_path_factory, recs, declared):
        data = b"\n".join(encode(r, how) for r, how in recs) + b"\n"
        path = tmp_path_factory.mktemp("fz") / "d.jsonl"
        path.write_bytes(data)
        check_every_line_accounted(path, data, fmt if declared else "auto", COLUMNS if fmt == "columns" else None)

    test.__name__ = f"test_random_{fmt}_records"
    return test


for _fmt in FORMATS:
    globals()[f"test_random_{_fmt}_records"] = _shapes(_fmt)


@FUZZ
@given(recs=st.lists(st.one_of(FORMATS["messages"], anything), max_size=5))
def test_random_json_array_file(tmp_path_factory, recs):
    path = tmp_path_factory.mktemp("fz") / "d.json"
    path.write_bytes(json.dumps(recs).encode("ascii"))
    convs, issues = read_file(path)
    assert len(convs) + len({i.source.line for i in issues}) == max(len(recs), 1)
