"""P-Tuning v2 specifics: KV-cache generation equals cache-free greedy decoding, the remote-code hook,
packing refused, merge refused with a reason."""

import pytest
import torch

from glmtune.config import load_config
from glmtune.methods import get
from glmtune.models.families import family_of
from glmtune.train.trainer import load_for_training, train


@pytest.fixture(scope="module")
def trained_prefix(memo_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptuning")
    cfg = load_config(None, [f"data.train={memo_file}", "data.val_size=0", "method.name=ptuning",
                             "method.pre_seq_len=6", "method.prefix_projection=true", "method.prefix_hidden=32",
                             f"train.output_dir={out}", "train.max_steps=3", "train.lr=1e-1", "train.resume=never",
                             "train.save_steps=1000", "plan.strict=false"])
    res = train(cfg, quiet=True)
    _, loaded = load_for_training(cfg)
    model = get("ptuning").load_trained(loaded, res.run_dir / "adapter", cfg.method)
    return model.eval(), loaded.tokenizer


@torch.no_grad()
def test_generation_with_kv_cache_equals_cache_free_greedy(trained_prefix):
    model, tok = trained_prefix
    prompts = [tok("语速3停顿2 很好")["input_ids"], tok("你好")["input_ids"]]
    width = max(map(len, prompts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding, as the engine does
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                            use_cache=True, eos_token_id=None, pad_token_id=pad)[:, width:]
    for row, p in enumerate(prompts):
        seq = torch.tensor([p])
        for _ in range(8):  # reference: recompute the whole sequence (prefix + tokens) every step
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        assert cached[row].tolist() == seq[0, len(p):].tolist()


def test_prefix_changes_the_model(trained_prefix):
    model, tok = trained_prefix
    ids = torch.tensor([tok("你好")["input_ids"]])
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        prefixed = model(input_ids=ids).logits
    assert (plain - prefixed).abs().max() > 1e-3


def test_remote_code_chatglm_gets_pre_seq_len_before_load():
    cfg = load_config(None, ["method.name=ptuning", "method.pre_seq_len=64", "method.prefix_projection=true"])
    m = get("ptuning")
    assert m.config_overrides(cfg.method, family_of("chatglm")) == {"pre_seq_len": 64, "prefix_projection": True}
    assert m.config_overrides(cfg.method, family_of("glm4")) == {}


def test_packing_is_refused():
    cfg = load_config(None, ["method.name=ptuning", "train.packing=true"])
    method, loaded = load_for_training(cfg)
    with pytest.raises(ValueError, match="packing"):
        method.prepare(loaded, cfg.method, cfg.train)


def test_merge_is_refused_with_a_reason(trained_prefix):
    m = get("ptuning")
    assert m.merge(trained_prefix[0]) is None
    assert "key/value" in m.merge_unsupported_reason
