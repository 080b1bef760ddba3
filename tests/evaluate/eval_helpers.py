"""Helpers for the evaluation e2e tests: scoring data, a field spec."""

MINI_SPEC = ("name: mini\nfields:\n  - {name: 语速, type: int, allowed: [1,2,3,4,5]}\n"
             "  - {name: 停顿, type: int, allowed: [1,2,3,4,5]}\n  - {name: 评语, type: str}\n")


def write_scoring_data(path, n, seed):
    """Short scoring conversations whose answer repeats the score in the prompt: `语速:v;停顿:v;评语:好`."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            v = rng.randint(1, 5)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"朗读得分{v}，请评分"},
                                             {"role": "assistant", "content": f"语速:{v};停顿:{v};评语:好"}]},
                               ensure_ascii=False) + "\n")
    return path
