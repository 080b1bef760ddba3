"""A model that raises while generating ends `chat --prompt` and `predict` with one line and a non-zero exit
within seconds (the bug: chat waited forever on the streamer of a dead generation thread).

The fault is injected into the real CLI process: a `sitecustomize` on PYTHONPATH makes the model's forward
raise, so loading works and generation fails, on the plain path and on the P-Tuning (batching) path alike.
"""

import json
import os
import subprocess
import sys
import time

import pytest

FAULT = '''
import transformers.models.glm4.modeling_glm4 as m
def boom(self, *a, **k):
    raise RuntimeError("injected fault in forward")
m.Glm4ForCausalLM.forward = boom
'''


def run_cli(args, tmp_path, timeout=120):
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(FAULT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p, time.monotonic() - t0


@pytest.mark.timeout(300)
def test_chat_prompt_exits_nonzero_when_generation_raises(tiny_glm4, tmp_path):
    p, _ = run_cli(["chat", "--model", tiny_glm4, "--prompt", "你好", "--max-new-tokens", "4"], tmp_path)
    assert p.returncode != 0
    assert "error: generation failed" in p.stderr and "injected fault" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.timeout(300)
def test_predict_exits_nonzero_when_generation_raises(tiny_glm4, tmp_path):
    test = tmp_path / "t.jsonl"
    test.write_text(json.dumps({"messages": [{"role": "user", "content": "你好"},
                                             {"role": "assistant", "content": "好"}]}, ensure_ascii=False) + "\n")
    p, _ = run_cli(["predict", "--model", tiny_glm4, "--test", test, "--out", tmp_path / "p.jsonl",
                    "--max-new-tokens", "4"], tmp_path)
    assert p.returncode != 0
    assert "error: generation failed" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.timeout(300)
def test_ptuning_engine_raises_instead_of_hanging(tiny_glm4):
    """The P-Tuning path generates in the batching engine's thread: its error must reach the caller (chat,
    webchat, predict), as GenerationError, within seconds."""
    from peft import PrefixTuningConfig, get_peft_model

    from glmtune.config.schema import ModelSection
    from glmtune.models.load import load

    loaded = load(ModelSection(path=str(tiny_glm4)))
    model = get_peft_model(loaded.model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    from glmtune.errors import GenerationError
    from glmtune.inference.engine import HFEngine

    engine = HFEngine(model, loaded.tokenizer, loaded.family)

    def boom(*a, **k):
        raise RuntimeError("injected fault in forward")

    engine._batching()._net = boom  # what the batching engine calls for a prefix model

    t0 = time.monotonic()
    with pytest.raises(GenerationError, match="injected fault"):
        "".join(engine.stream([{"role": "user", "content": "你好"}], max_new_tokens=4))
    with pytest.raises(GenerationError, match="injected fault"):
        engine.generate([[{"role": "user", "content": "你好"}]], max_new_tokens=4)
    assert time.monotonic() - t0 < 30
    engine.close()
