"""The answer line `语速:X;停顿:X;声母:X;韵母:X;声调:X;完整度:X;评语:…` (§4 output format).

`format_answer(bands)` writes it with a deterministic 评语 chosen from templated sentences by the
bands; `parse_answer(text)` reads it back from a model, accepting `:;` and full-width `：；`, spaces,
and missing 评语; it fails (returns None + reason) unless all six scores are present, in order, as
integers 1-5 — the seed's own example dropped 声调, so a lenient reader would hide that (§9).
"""

from __future__ import annotations

import re

from glmtune.tasks.oral_reading.rubric import DIMENSIONS

_FLUENCY = {
    (5, 5): "朗读流畅，语速适中，停顿自然",
    (5, 3): "语速不错，但句中有一些不必要的停顿",
    (5, 1): "语速尚可，但句中卡顿较多，影响了流利度",
    (3, 5): "语速偏慢，停顿控制得较好",
    (3, 3): "朗读较为流利，语速和停顿都还可以再自然一些",
    (3, 1): "语速偏慢，句中卡顿较多",
    (1, 5): "语速太慢，需要多练习连贯朗读",
    (1, 3): "语速很慢，还有一些不必要的停顿",
    (1, 1): "朗读很不流利，语速慢、卡顿多",
}
# Teachers use the whole 1-5 scale (2 and 4 included); a fluency pair with a 2 or a 4 is phrased from
# one clause per dimension, the rubric's own 5/3/1 pairs keep their sentences above.
_RATE = {5: "语速适中", 4: "语速比较合适", 3: "语速偏慢", 2: "语速较慢", 1: "语速太慢"}
_PAUSE = {5: "停顿自然", 4: "停顿基本自然", 3: "句中有一些不必要的停顿", 2: "句中不必要的停顿较多", 1: "句中卡顿很多"}
_SEGMENTAL = {5: "声母韵母发音准确", 4: "声母韵母基本准确", 3: "有少许声母韵母错误", 2: "声母韵母错误偏多",
              1: "声母韵母错误较多"}
_TONE = {5: "声调掌握得很好", 4: "声调基本准确", 3: "部分声调不够准确", 2: "声调错误偏多", 1: "声调错误较多，需要重点练习"}
_COMPLETE = {5: "完成度很好", 4: "基本读完整", 3: "有个别字漏读、增读或回读", 2: "漏读、增读或回读较多",
             1: "有大段内容没有读或读错位置"}


def comment(bands: dict[str, int]) -> str:
    """A deterministic 评语 from scores 1-5: fluency, then segmental (the worse of 声母/韵母), tone, completeness."""
    seg = min(bands["声母"], bands["韵母"])
    pair = (bands["语速"], bands["停顿"])
    fluency = _FLUENCY.get(pair) or f"{_RATE[pair[0]]}，{_PAUSE[pair[1]]}"
    parts = [fluency, _SEGMENTAL[seg], _TONE[bands["声调"]], _COMPLETE[bands["完整度"]]]
    low = sum(bands[d] for d in DIMENSIONS)
    close = "继续保持！" if low >= 27 else "希望继续努力~!" if low >= 18 else "请多听多读，加油！"
    return "，".join(parts) + "。" + close


def format_answer(bands: dict[str, int], remark: str | None = None) -> str:
    scores = ";".join(f"{d}:{int(bands[d])}" for d in DIMENSIONS)
    return f"{scores};评语:{remark if remark is not None else comment(bands)}"


def parse_answer(text: str) -> tuple[dict[str, int] | None, str | None, str]:
    """(scores, 评语, problem). scores is None when the line is not valid; problem says why."""
    if not isinstance(text, str) or not text.strip():
        return None, None, "empty answer"
    body = text.strip()
    remark = None
    m = re.search(r"评语\s*[:：]", body)
    if m:
        remark = body[m.end():].strip()
        body = body[:m.start()]
    scores: dict[str, int] = {}
    order: list[str] = []
    for part in re.split(r"[;；\n]", body):
        if not part.strip():
            continue
        kv = re.fullmatch(r"\s*([^:：]+?)\s*[:：]\s*(\S+?)\s*", part)
        if not kv:
            return None, remark, f"unreadable field {part.strip()!r}"
        key, val = kv.group(1), kv.group(2)
        if key not in DIMENSIONS:
            return None, remark, f"unknown field {key!r}"
        if not re.fullmatch(r"[1-5]", val):
            return None, remark, f"{key} value {val!r} is not an integer 1-5"
        scores[key] = int(val)
        order.append(key)
    missing = [d for d in DIMENSIONS if d not in scores]
    if missing:
        return None, remark, f"missing {','.join(missing)}"
    if order != list(DIMENSIONS):
        return None, remark, f"fields out of order: {order}"
    return scores, remark, ""
