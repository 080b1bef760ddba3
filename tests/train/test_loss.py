"""The chunked supervised-only loss equals the plain full-logits loss, in value and in gradients, on both
paths: split decoder/head (plain and LoRA models) and `logits_to_keep` (PEFT prefix tuning)."""

import pytest
import torch

from glmtune.config import load_config
from glmtune.data.collate import PadCollator
from glmtune.models.loss import can_split_head, causal_lm_loss_sum, plain_loss_sum
from glmtune.train.trainer import load_for_training


def batch():
    g = torch.Generator().manual_seed(0)
    feats = []
    for n, prompt in ((21, 9), (14, 5), (30, 12)):
        ids = torch.randint(20, 1500, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return PadCollator(pad_id=0)(feats)


def model_for(method, arch):
    extra = {"lora": ["method.dropout=0"], "ptuning": ["method.pre_seq_len=4"], "full": []}[method]
    cfg = load_config(None, [f"model.path=tiny:{arch}", f"method.name={method}", *extra])
    m, loaded = load_for_training(cfg)
    model = m.prepare(loaded, cfg.method, cfg.train)
    with torch.no_grad():  # non-trivial adapter / prefix so the comparison covers them
        for n, p in model.named_parameters():
            if "lora_B" in n or "prompt_encoder" in n:
                p.normal_(0, 0.1)
    return model.train()


def grads(model, fn):
    model.zero_grad()
    loss_sum, n = fn()
    (loss_sum / n).backward()
    return (loss_sum / n).detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,arch,split", [("full", "glm4", True), ("lora", "glm", True), ("full", "llama", True),
                                               ("ptuning", "glm4", False), ("ptuning", "llama", False)])
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_loss_and_grads_equal_plain(method, arch, split, chunk):
    model = model_for(method, arch)
    assert can_split_head(model) is split
    b = batch()
    ref_loss, ref_g = grads(model, lambda: plain_loss_sum(model, b))
    loss, g = grads(model, lambda: causal_lm_loss_sum(model, b, chunk))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert set(g) == set(ref_g)
    for k in g:
        torch.testing.assert_close(g[k], ref_g[k], atol=1e-5, rtol=1e-4, msg=k)


def test_only_supervised_tokens_count():
    b = batch()
    _, n = causal_lm_loss_sum(model_for("full", "glm4"), b, 8)
    assert n == int((b["labels"][:, 1:] != -100).sum()) == (21 - 9) + (14 - 5) + (30 - 12)


def test_right_padding_needs_no_mask_but_left_padding_keeps_it():
    import torch

    from glmtune.models.loss import _attention_inputs

    right = {"attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    left = {"attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}
    assert _attention_inputs(right) == {}
    assert torch.equal(_attention_inputs(left)["attention_mask"], left["attention_mask"])
