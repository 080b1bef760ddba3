"""Packing without cross-sample leakage: a packed row gives every sample the loss it has alone."""

import json

import pytest
import torch
import torch.nn.functional as F

from glmtune.config import load_config
from glmtune.data.collate import PackedCollator, PadCollator
from glmtune.models.loss import causal_lm_loss_sum
from glmtune.train.trainer import load_for_training, train


def features():
    g = torch.Generator().manual_seed(1)
    out = []
    for n, prompt in ((11, 4), (17, 6), (6, 2), (9, 3)):
        ids = torch.randint(20, 1500, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def per_token_ce(model, batch):
    kw = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    # use_cache=False as in training: transformers only honours packed position ids without a KV cache
    logits = model(input_ids=batch["input_ids"], use_cache=False, **kw).logits[:, :-1].float()
    tgt = batch["labels"][:, 1:]
    return F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none"), tgt


@pytest.mark.parametrize("arch", ["glm4", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_packed_rows_give_each_sample_its_own_loss(arch, attn):
    cfg = load_config(None, [f"model.path=tiny:{arch}", "method.name=full", f"model.attn_implementation={attn}"])
    model = load_for_training(cfg)[1].model.eval()
    feats = features()
    collator = PackedCollator(pad_id=0, max_len=32)
    packed = collator(feats)
    assert packed["input_ids"].shape[0] < len(feats), "the test must actually pack several samples per row"
    ce_p, tgt_p = per_token_ce(model, packed)
    # Alone: each sample in its own batch of one, no padding.
    alone = [per_token_ce(model, PadCollator(0)([f]))[0].sum().item() for f in feats]
    # Packed: sum the CE over each sample's span (position ids restart at each sample's first token).
    for r, row in enumerate(collator.rows(feats)):
        at = 0
        for i in row:
            k = len(feats[i]["input_ids"])
            # targets of positions at..at+k-2 are the sample's tokens 1..k-1
            assert ce_p[r, at:at + k - 1].sum().item() == pytest.approx(alone[i], rel=1e-5, abs=1e-4)
            at += k
    # ...and the chunked training loss sees the same totals.
    loss_sum, n = causal_lm_loss_sum(model, packed, 8)
    assert n == sum(sum(1 for x in f["labels"][1:] if x != -100) for f in feats)
    assert loss_sum.item() == pytest.approx(sum(alone), rel=1e-5)


@torch.no_grad()
def test_leakage_would_show():
    """Guard against a vacuous test: without restarting positions (plain concatenation) the losses differ."""
    cfg = load_config(None, ["model.path=tiny:glm4", "method.name=full"])
    model = load_for_training(cfg)[1].model.eval()
    feats = features()[:2]
    packed = PackedCollator(0, 64)(feats)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert not torch.allclose(per_token_ce(model, packed)[0], per_token_ce(model, leaky)[0], atol=1e-3)


def test_training_with_packing(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"答案{i}好"}]}
            for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"data.train={data}", "data.val_size=0", "train.packing=true", "train.batch_size=4",
                             f"train.output_dir={tmp_path / 'run'}", "train.max_steps=6", "train.lr=1e-2",
                             "method.dropout=0", "train.resume=never", "train.save_steps=1000", "plan.strict=false"])
    s = train(cfg, quiet=True).summary
    assert s["loss_last"] < s["loss_first"]
