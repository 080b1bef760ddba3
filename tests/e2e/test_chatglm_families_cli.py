"""chatglm3-6b and glm-4-9b-chat in their original remote-code layout (real config, tokenizer and remote code,
real padded vocabulary, tiny random layers), converted on the fly to native Glm, through the real CLI:
train (LoRA and P-Tuning v2 with the official pre_seq_len/prefix_projection), predict, chat --prompt,
export (LoRA), and `glmtune serve` answering the `openai` client (plain and streamed, which must agree)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chatglm_converted import remote_folder  # noqa: E402

pytestmark = pytest.mark.slow
QUESTIONS = ["语速3停顿2", "你好", "读得怎么样"]


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "GLMTUNE_CACHE": str(tmp_path / "cache")}


def _glmtune(env, *args):
    p = subprocess.run([sys.executable, "-m", "glmtune", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 0, f"glmtune {args} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr
    return p


def _data(tmp_path):
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": QUESTIONS[i % 3]},
                                         {"role": "assistant", "content": f"语速:{i};评语:好"}]} for i in range(6)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:3]), "utf-8")
    return train, test


def _predictions(path):
    return {r["id"]: r["prediction"] for r in map(json.loads, path.read_text("utf-8").splitlines())}


@pytest.mark.parametrize("model", ["chatglm3-6b", "glm-4-9b-chat"])
def test_remote_chatglm_folder_through_every_verb(model, serve_process, tmp_path):
    import openai

    env = _env(tmp_path)
    folder = remote_folder(model, tmp_path / model)
    train, test = _data(tmp_path)
    common = [f"model.path={folder}", "model.trust_remote_code=true", f"data.train={train}", "data.val_size=0",
              "train.max_steps=2", "train.batch_size=2", "train.resume=never", "plan.strict=false"]

    # LoRA: train, predict, chat, export
    lora = tmp_path / "lora"
    p = _glmtune(env, "train", *common, f"train.output_dir={lora}", "method.name=lora", "method.targets=all")
    assert "native Glm" in p.stderr  # the route taken is said
    adapter = json.loads(next(lora.rglob("adapter_config.json")).read_text())
    assert not {"lm_head", "output_layer", "embed_tokens"} & set(adapter["target_modules"])
    _glmtune(env, "predict", "--run", lora, "--test", test, "--out", tmp_path / "lora.jsonl", "--max-new-tokens", "6")
    assert set(_predictions(tmp_path / "lora.jsonl")) == {"s0", "s1", "s2"}
    _glmtune(env, "chat", "--run", lora, "--prompt", QUESTIONS[0], "--max-new-tokens", "4")
    _glmtune(env, "export", "--run", lora, "--out", tmp_path / "export")
    out_cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    real_cfg = json.loads((folder / "config.json").read_text())
    assert out_cfg["model_type"] == "glm" and out_cfg["vocab_size"] == real_cfg["padded_vocab_size"]

    # P-Tuning v2, official keys: pre_seq_len + prefix_projection (the MLP, as wide as the model)
    pt = tmp_path / "ptuning"
    _glmtune(env, "train", *common, f"train.output_dir={pt}", "method.name=ptuning", "method.pre_seq_len=4",
             "method.prefix_projection=true", "train.lr=1e-2")
    saved = json.loads((pt / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PREFIX_TUNING" and saved["num_virtual_tokens"] == 4
    _glmtune(env, "predict", "--run", pt, "--test", test, "--out", tmp_path / "pt.jsonl", "--max-new-tokens", "6")
    _glmtune(env, "predict", "--model", folder, "--test", test, "--out", tmp_path / "base.jsonl",
             "--max-new-tokens", "6")
    assert _predictions(tmp_path / "pt.jsonl") != _predictions(tmp_path / "base.jsonl"), \
        "the trained prefix must change the answers"
    chat = _glmtune(env, "chat", "--run", pt, "--prompt", QUESTIONS[1], "--max-new-tokens", "6").stdout

    # serve the P-Tuning run; the openai client asks plain and streamed
    with serve_process(tmp_path / "serve.log", "--run", pt, env=env, startup_s=600, stop_s=60) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none")
        name = client.models.list().data[0].id
        ask = dict(model=name, messages=[{"role": "user", "content": QUESTIONS[1]}], temperature=0, max_tokens=6)
        plain = client.chat.completions.create(**ask).choices[0].message.content
        pieces = [c.choices[0].delta.content for c in client.chat.completions.create(**ask, stream=True)
                  if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == plain
    assert not pieces or not pieces[0][0].isspace()
    assert plain.strip() == plain and plain in chat  # the same greedy answer as `glmtune chat --prompt`
