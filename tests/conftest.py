"""Shared fixtures: tiny models built once per machine (cached), one thread per process."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_glm4():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("glm4")


@pytest.fixture(scope="session")
def tiny_glm():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("glm")


@pytest.fixture(scope="session")
def tiny_llama():
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny("llama")


@pytest.fixture(params=["glm4", "glm"])
def tiny_glm_any(request):
    from glmtune.models.tiny import ensure_tiny

    return ensure_tiny(request.param)


@pytest.fixture(scope="session")
def cache_free_greedy():
    """Reference greedy decoding with no KV cache: every step re-runs the whole sequence through `net`
    (for a PEFT prefix model, `PeftModel.forward` prepends the learned prefix each time). Returns the new
    token ids, stopping before any of `stop_ids`."""
    import torch

    @torch.no_grad()
    def decode(net, ids: list[int], stop_ids, n: int) -> list[int]:
        seq, out = torch.tensor([ids]), []
        for _ in range(n):
            nxt = int(net(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            if nxt in stop_ids:
                break
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
        return out

    return decode
