"""The `demo --real` task data (no weights needed): deterministic, held-out names unseen, answers follow the format."""

import json
import re

from glmtune.demo_real import general_en_set, record_task
from glmtune.evaluate.forgetting import answer_ok, load_items


def test_record_task_is_deterministic_and_held_out_names_are_new():
    train, test = record_task()
    assert (train, test) == record_task() and len(train) == 64 and len(test) == 24
    names = lambda rows: {r["messages"][0]["content"].split("name ")[1].split(",")[0] for r in rows}  # noqa: E731
    assert not names(train) & names(test)
    for r in train + test:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        name, code = re.fullmatch(r"Record: name (\w+), code (\d{4})", q).groups()
        assert a == f"{code}@{name}"


def test_general_en_set_never_accepts_its_own_prompt():
    items = load_items(general_en_set())
    assert len(items) == 18 and len({it["id"] for it in items}) == 18
    for it in items:
        assert not answer_ok(it["prompt"], it["accept"]), it["id"]
    assert json.loads(general_en_set().read_text().splitlines()[0])["accept"] == ["Paris"]
