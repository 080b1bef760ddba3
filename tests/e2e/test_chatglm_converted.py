"""A remote-code ChatGLM3 folder (original layout, real tokenizer and vocabulary, tiny random weights) goes
through the real CLI: the loader converts it to native Glm on the fly, then train (LoRA), chat and export work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def remote_folder(model: str, dest: Path) -> Path:
    """Tiny `model` (chatglm3-6b or glm-4-9b-chat) checkpoint in the original remote-code layout, with its real
    tokenizer, remote code and the real padded vocabulary (65024 / 151552 rows): the equivalence fixture's
    layers with fresh seeded embedding and output rows."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    cfg = json.loads((ASSETS / "chatglm_equiv" / model / "config.json").read_text())
    real = json.loads((ASSETS / "real" / model / "config.json").read_text())
    cfg.update(padded_vocab_size=real["padded_vocab_size"], pad_token_id=real["pad_token_id"],
               eos_token_id=real["eos_token_id"])
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, t in load_file(str(ASSETS / "chatglm_equiv" / model / "model.safetensors")).items():
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            t = 0.08 * torch.randn(cfg["padded_vocab_size"], t.shape[1], generator=g)
        state[name] = t.contiguous()
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    for f in (ASSETS / "real" / model).iterdir():
        if f.name != "config.json":
            shutil.copy2(f, dest / f.name)
    return dest


def chatglm3_folder(dest: Path) -> Path:
    """Tiny ChatGLM3 checkpoint in the original remote-code layout, at the real padded vocabulary (65024)."""
    return remote_folder("chatglm3-6b", dest)


@pytest.mark.slow
def test_chatglm3_remote_folder_trains_chats_exports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "GLMTUNE_CACHE": str(tmp_path / "cache")}

    def glmtune(*args):
        p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=600)
        assert p.returncode == 0, f"glmtune {args} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    folder = chatglm3_folder(tmp_path / "chatglm3-tiny")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"语速{i}"},
                                                      {"role": "assistant", "content": f"语速:{i};评语:好"}]},
                                        ensure_ascii=False) + "\n" for i in range(4)), "utf-8")
    run = tmp_path / "run"
    p = glmtune("train", f"model.path={folder}", "model.trust_remote_code=true", f"data.train={train}",
                f"train.output_dir={run}", "data.val_size=0", "data.test_size=0", "train.max_steps=2",
                "train.batch_size=2", "method.name=lora")
    assert "native Glm" in p.stderr  # the route taken is said
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text()) if (run / "adapter").exists() else \
        json.loads(next(run.rglob("adapter_config.json")).read_text())
    assert "output_layer" not in adapter["target_modules"] and "lm_head" not in adapter["target_modules"]
    p = glmtune("chat", "--run", run, "--prompt", "你好", "--max-new-tokens", "3")
    assert "Traceback" not in p.stderr
    glmtune("export", "--run", run, "--out", tmp_path / "export")
    out_cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert out_cfg["model_type"] == "glm" and out_cfg["vocab_size"] == 65024
