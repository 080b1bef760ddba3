"""Training and chatting on the real GLM-4 vocabulary (glm-4-9b-chat-hf layout: native Glm4 + the tokenizer rebuilt
from the real tokenizer.model) with tiny random weights: the ids training uses are the official ones."""

import json
from pathlib import Path

import pytest
from test_cli_spine import glmtune

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.mark.slow
def test_train_and_chat_on_the_real_glm4_vocabulary(tmp_path):
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    from glmtune.models.load import load_tokenizer

    folder = tmp_path / "glm-4-tiny-hf"
    load_tokenizer(ASSETS / "real" / "glm-4-9b-chat").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = Glm4Config(vocab_size=151552, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=151329,
                     eos_token_id=[151329, 151336, 151338], tie_word_embeddings=False)
    Glm4ForCausalLM(cfg).save_pretrained(folder)
    cases = {c["name"]: c for c in json.loads((ASSETS / "official_ids" / "cases.json").read_text("utf-8"))["cases"]}
    official = {c["name"]: c for c in json.loads((ASSETS / "official_ids" / "glm4.json").read_text("utf-8"))["cases"]}
    names = ["seed_oral_grading", "multi_turn_history", "tool_observation", "punctuation_emoji"]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": cases[n]["messages"]}, ensure_ascii=False) + "\n"
                             for n in names), "utf-8")
    run = tmp_path / "run"
    glmtune("train", f"model.path={folder}", f"data.train={train}", f"train.output_dir={run}", "data.val_size=0",
            "data.test_size=0", "train.max_steps=1", "train.batch_size=2")
    p = glmtune("data", "render", train, run / "config.yaml", "--json")
    for line, n in zip(p.stdout.splitlines(), names):
        got = json.loads(line)
        assert (got["input_ids"], got["labels"]) == (official[n]["input_ids"], official[n]["labels"])
    p = glmtune("chat", "--run", run, "--prompt", "你好", "--max-new-tokens", "3")
    assert p.returncode == 0 and "Traceback" not in p.stderr
