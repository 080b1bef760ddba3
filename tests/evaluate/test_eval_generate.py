"""Incremental, resumable predictions with a scripted engine."""

import json

import pytest

from glmtune.data.formats import read_file
from glmtune.evaluate.generate import PredictionsMismatch, generate_predictions, items_from_conversations, read_predictions


def _test_file(tmp_path, n=7, with_ids=False):
    p = tmp_path / "test.jsonl"
    lines = []
    for i in range(n):
        rec = {"messages": [{"role": "system", "content": "评分"}, {"role": "user", "content": f"q{i}" + "x" * i},
                            {"role": "assistant", "content": f"a{i}"}]}
        if with_ids:
            rec["id"] = f"s{i}"
        lines.append(json.dumps(rec, ensure_ascii=False))
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    convs, issues = read_file(p)
    assert not issues
    return p, items_from_conversations(convs)[0]


def echo(messages):
    return "ans:" + messages[-1]["content"]


def test_ids_prompt_and_reference(tmp_path):
    p, items = _test_file(tmp_path, 2)
    assert items[0].id == f"{p}:1" and items[0].reference == "a0"
    assert [m["role"] for m in items[0].prompt] == ["system", "user"]


def test_interrupted_run_resumes_where_it_stopped(tmp_path, scripted):
    _, items = _test_file(tmp_path, 7, with_ids=True)
    out = tmp_path / "ev" / "predictions.jsonl"
    dying = scripted(echo, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_predictions(dying, items, out, batch_size=3, meta={"model": "m"})
    rows, bad = read_predictions(out)
    assert len(rows) == 6 and bad == 0                        # two full batches were on disk
    # longest prompts first: q6xxxxxx, q5xxxxx, q4xxxx in the first batch
    assert dying.batches[0] == ["q6xxxxxx", "q5xxxxx", "q4xxxx"]
    with out.open("a", encoding="utf-8") as f:                 # a kill in the middle of a write
        f.write('{"id": "s0", "predic')
    fresh = scripted(echo)
    res = generate_predictions(fresh, items, out, batch_size=3, meta={"model": "m"})
    assert fresh.batches == [["q0"]]                           # only the missing one is generated
    assert (res["resumed"], res["generated"], res["dropped_lines"]) == (6, 1, 1)
    assert [r["id"] for r in res["rows"]] == [f"s{i}" for i in range(7)]   # test-file order
    assert all(r["prediction"] == "ans:" + r["prompt"][-1]["content"] for r in res["rows"])
    assert len(read_predictions(out)[0]) == 7 and read_predictions(out)[1] == 0


def test_other_settings_are_refused_not_mixed(tmp_path, scripted):
    _, items = _test_file(tmp_path, 3)
    out = tmp_path / "predictions.jsonl"
    generate_predictions(scripted(echo), items, out, meta={"model": "a"})
    with pytest.raises(PredictionsMismatch, match="model: 'a' -> 'b'"):
        generate_predictions(scripted(echo), items, out, meta={"model": "b"})
    with pytest.raises(PredictionsMismatch, match="max_new_tokens"):
        generate_predictions(scripted(echo), items, out, meta={"model": "a"}, max_new_tokens=7)
    eng = scripted(lambda m: "new")
    res = generate_predictions(eng, items, out, meta={"model": "b"}, restart=True)
    assert res["generated"] == 3 and {r["prediction"] for r in res["rows"]} == {"new"}


def test_conversation_without_final_answer_is_reported():
    from glmtune.data.formats import Conversation, Source

    conv = Conversation([{"role": "user", "content": "hi"}], Source("t.jsonl", 3))
    items, problems = items_from_conversations([conv])
    assert items == [] and problems == ["t.jsonl:3: no assistant answer at the end to compare with; skipped"]


def test_duplicate_record_ids_fall_back_to_file_line():
    from glmtune.data.formats import Conversation, Source

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    convs = [Conversation(msgs, Source("t.jsonl", i), {"id": "same"}) for i in (1, 2)]
    assert [it.id for it in items_from_conversations(convs)[0]] == ["t.jsonl:1", "t.jsonl:2"]
