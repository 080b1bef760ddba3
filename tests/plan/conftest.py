"""Fixtures for plan tests: a seed-000-shaped JSONL (rubric system prompt + compact ISE record + answer)."""

import json
import random
from importlib import resources

import pytest

SYLLABLES = [("俗", "su2", "s", "u"), ("话", "hua4", "h", "ua"), ("说", "shuo1", "sh", "uo"),
             ("男", "nan2", "n", "an"), ("大", "da4", "d", "a"), ("当", "dang1", "d", "ang"),
             ("婚", "hun1", "h", "un"), ("女", "nv3", "n", "v"), ("嫁", "jia4", "j", "ia"),
             ("而", "er2", "", "er"), ("姻", "yin1", "y", "in"), ("应", "ying1", "y", "ing")]


def ise_record(n_syll: int, rng: random.Random) -> str:
    """A compact ISE string in the seed's 9-field format {beg,end,symbol,len,type,dp,is_yun,perr,perr_level}."""
    pos, parts = 62, ["sil:{0,62,null,62,sil,0.0,null,null,null}"]
    for k in range(n_syll):
        ch, sym, ini, fin = SYLLABLES[k % len(SYLLABLES)]
        a, b = rng.randint(8, 30), rng.randint(8, 30)
        parts.append(f"{ch}:{{{pos},{pos + a + b},{sym},{a + b},paper,null,null,null,null}}")
        if ini:
            parts.append(f"{ini}:{{{pos},{pos + a},null,{a},paper,0.0,0.0,{rng.choice(['0.0', '1.0'])},1.0}}")
        parts.append(f"{fin}:{{{pos + a},{pos + a + b},null,{b},paper,0.0,1.0,{rng.choice(['0.0', '1.0'])},3.0}}")
        pos += a + b
    return ";".join(parts) + ";"


def seed_records(n: int = 200, seed: int = 0) -> list[dict]:
    rubric = (resources.files("glmtune") / "assets" / "oral_rubric_zh.txt").read_text("utf-8")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rec = ise_record(rng.randint(25, 35), rng)
        user = ("我是一位学习中文口语的留学生，我的朗读内容是{俗话说：男大当婚，女大当嫁。}。我的音频的量化数据是{"
                + rec + "}。请你给我的语速、停顿、声母、韵母、声调和完整度进行分别打分并给出评语。")
        s = [rng.choice([1, 3, 5]) for _ in range(6)]
        answer = (f"语速:{s[0]};停顿:{s[1]};声母:{s[2]};韵母:{s[3]};声调:{s[4]};完整度:{s[5]};"
                  f"评语:朗读不够流利，有少许声母韵母错误，但完成度很好，希望继续努力~!")
        out.append({"messages": [{"role": "system", "content": rubric}, {"role": "user", "content": user},
                                 {"role": "assistant", "content": answer}]})
    return out


@pytest.fixture(scope="session")
def seed_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "oral.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in seed_records()) + "\n", "utf-8")
    return path


@pytest.fixture(scope="session")
def seed_advice():
    """The seed's advised settings: epochs 7, batch 6, lr 5e-4, max length 192, warm-up 100, clip 1.0."""
    return list(SEED_ADVICE)


SEED_ADVICE = ["train.epochs=7", "train.batch_size=6", "train.lr=5e-4", "data.cutoff_len=192",
               "train.warmup_steps=100", "train.max_grad_norm=1.0", "data.val_size=0.1"]
