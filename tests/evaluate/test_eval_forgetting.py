"""Forgetting check: the bundled set is well-formed and cannot be passed by echoing; delta arithmetic."""

import io
import re

import pytest

from glmtune.evaluate.forgetting import answer_ok, forgetting_delta, load_items, render_forgetting, run_forgetting


def test_bundled_set_shape():
    items = load_items()
    assert 25 <= len(items) <= 40
    assert len({it["id"] for it in items}) == len(items)
    assert {it["lang"] for it in items} == {"zh", "en"}
    assert {"arithmetic", "capital", "fact", "translation"} <= {it["category"] for it in items}
    for it in items:
        for a in it["accept"]:
            if a.startswith("re:"):
                re.compile(a[3:])


def test_echo_and_empty_answers_fail_every_item():
    for it in load_items():
        assert not answer_ok(it["prompt"], it["accept"]), it["id"]
        assert not answer_ok("", it["accept"]), it["id"]


def test_accept_rules():
    assert answer_ok("答案是42。", ["re:(?<!\\d)42(?!\\d)"]) and not answer_ok("答案是142", ["re:(?<!\\d)42(?!\\d)"])
    assert answer_ok("The capital is LONDON.", ["London"]) and not answer_ok("Londonderry", ["London"])
    assert answer_ok("首都是北京", ["北京"])


def test_run_forgetting_delta(scripted):
    items = load_items()
    regex_only = {"trans-apple-zh": "apple", "trans-book-zh": "book", "trans-water-zh": "Water.", "lang-plural-en": "children"}
    oracle = {it["prompt"]: regex_only.get(it["id"]) or next(a for a in it["accept"] if not a.startswith("re:"))
              for it in items}
    base = scripted(lambda m: oracle[m[-1]["content"]])
    lost_ids = {items[0]["id"], items[5]["id"], items[9]["id"]}
    tuned = scripted(lambda m: "不知道" if next(i["id"] for i in items if i["prompt"] == m[-1]["content"]) in lost_ids
                     else oracle[m[-1]["content"]])
    res = run_forgetting(base, tuned, items, batch_size=7)
    assert res["base_accuracy"] == pytest.approx(1.0)
    assert res["tuned_accuracy"] == pytest.approx((len(items) - 3) / len(items))
    assert res["delta"] == pytest.approx(-3 / len(items))
    assert set(res["lost"]) == lost_ids and res["gained"] == []
    assert len(base.batches) == -(-len(items) // 7)        # batched, not one by one
    from rich.console import Console

    buf = io.StringIO()
    line = render_forgetting(res, Console(file=buf, force_terminal=True, width=200))
    assert "100% (base) -> 90% (tuned), -10.0 points" in line
    assert "\x1b[1;31m" in buf.getvalue()                   # red when worse


def test_delta_needs_same_items():
    a = {"accuracy": 0.5, "answers": {"x": ("1", True)}}
    with pytest.raises(KeyError):
        forgetting_delta(a, a, [{"id": "y", "prompt": "p", "accept": ["q"]}])
