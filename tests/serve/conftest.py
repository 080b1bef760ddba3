"""Serve fixtures: the tiny GLM-4 with two LoRA adapters whose weights are random (so each clearly
changes the answers), loaded once; apps started on 127.0.0.1 in a background uvicorn thread."""

import pytest


def make_adapter(base_path, out, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    peft.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def adapters(tiny_glm4, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"alpha": str(make_adapter(tiny_glm4, root / "alpha", 1)),
            "beta": str(make_adapter(tiny_glm4, root / "beta", 2))}


@pytest.fixture(scope="session")
def served(tiny_glm4, adapters):
    from glmtune.serve.loading import load_served

    return load_served(model=str(tiny_glm4), adapters=adapters, name="tiny")


@pytest.fixture
def start_app(served):
    """start_app(**serve_overrides) -> (base_url, app); servers stop at test end."""
    from glmtune.serve.api import create_app, serve_in_thread
    from glmtune.serve.config import ServeSection

    servers = []

    def start(**overrides):
        cfg = ServeSection(**{"max_prompt_tokens": 256, "max_new_tokens": 128, **overrides})
        app = create_app(served, cfg)
        server, url = serve_in_thread(app)
        servers.append(server)
        return url, app

    yield start
    for s in servers:
        s.should_exit = True
        s.thread.join(timeout=10)
