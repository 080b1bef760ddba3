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


def test_trained_prefix_generates_with_its_prefix(trained_prefix, cache_free_greedy):
    """The engine (KV cache, left-padded batch) answers a trained prefix (with projection) exactly as a
    cache-free greedy decode of the PEFT model, and not as the base model."""
    from glmtune.models.families import family_of
    from glmtune.inference.batching import BatchingEngine
    from glmtune.inference.engine import HFEngine

    model, tok = trained_prefix
    engine = HFEngine(model, tok, family_of(model.config.model_type))
    be = BatchingEngine(engine, max_batch_size=2)
    try:
        for p in [tok("语速3停顿2 很好")["input_ids"], tok("你好")["input_ids"]]:
            got = be.generate(p, max_new_tokens=8).tokens
            assert got == cache_free_greedy(model, p, engine.stop_ids, 8)
            assert got != cache_free_greedy(model.get_base_model(), p, engine.stop_ids, 8), "test could not fail"
    finally:
        be.close()


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
