import json
import random

import pytest


def grading_rows(n: int, seed: int = 0) -> list[dict]:
    """Small memorisable grading-style samples in the seed's messages format."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 5), rng.randint(1, 5)
        rows.append({"id": i, "messages": [
            {"role": "system", "content": "你是老师"},
            {"role": "user", "content": f"语速{a}停顿{b}"},
            {"role": "assistant", "content": f"语速:{a};停顿:{b};评语:好"}]})
    return rows


@pytest.fixture
def grading_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in grading_rows(32)), encoding="utf-8")
    return p
