"""Every registered method × every tiny architecture, with the same relational assertions (the method
matrix of docs/architecture.md): the right parameters train and the others do not move; loss falls on a memorisable set;
save -> load gives identical logits; merge gives the unmerged logits; batch 4 × GA 1 ≈ batch 1 × GA 4."""

import pytest
import torch

from glmtune.config import load_config
from glmtune.methods import REGISTRY, get
from glmtune.train.callbacks import read_metrics
from glmtune.train.trainer import load_for_training, train

from method_helpers import Capture, logits_of, probe_batch

ARCHS = ["glm4", "glm", "llama"]
STEPS = 6

# Per method: overrides that make a few steps enough, and which parameter names must be trainable.
SETUPS = {
    "full": (["train.lr=1e-3"], lambda n: True),
    "freeze": (["method.trainable_layers=1", "method.trainable_modules=[norm]", "train.lr=1e-3"],
               lambda n: n.startswith("model.layers.1.") or n == "model.norm.weight"),
    "lora": (["method.rank=4", "method.dropout=0", "train.lr=1e-2"], lambda n: ".lora_" in n),
    "qlora": (["method.rank=4", "method.dropout=0", "train.lr=1e-2"], lambda n: ".lora_" in n),
    "ptuning": (["method.pre_seq_len=8", "train.lr=3e-1"], lambda n: "prompt_encoder" in n),
}


def test_matrix_covers_every_registered_method():
    assert set(SETUPS) == set(REGISTRY)


def make_cfg(memo_file, out, method, arch, batch, ga):
    extra, _ = SETUPS[method]
    return load_config(None, [
        f"data.train={memo_file}", "data.val_size=0", f"model.path=tiny:{arch}", f"method.name={method}",
        f"train.output_dir={out}", f"train.max_steps={STEPS}", f"train.batch_size={batch}", f"train.grad_accum={ga}",
        "train.scheduler=constant", "train.warmup_steps=0", "train.warmup_ratio=0", "train.save_steps=1000",
        "train.resume=never", "train.group_by_length=false", "plan.strict=false", *extra])


@pytest.fixture(scope="module", params=[(m, a) for m in SETUPS for a in ARCHS], ids=lambda p: f"{p[0]}-{p[1]}")
def run(request, memo_file, tmp_path_factory):
    method, arch = request.param
    out = tmp_path_factory.mktemp(f"{method}-{arch}")
    cfg = make_cfg(memo_file, out / "b4", method, arch, 4, 1)
    cap = Capture(at_step=2)
    res = train(cfg, callbacks=[cap], quiet=True)
    cfg_ga = make_cfg(memo_file, out / "b1ga4", method, arch, 1, 4)
    res_ga = train(cfg_ga, quiet=True)
    return dict(method=method, arch=arch, cfg=cfg, cap=cap, res=res, res_ga=res_ga)


def test_right_parameters_train_and_others_do_not_move(run):
    _, expect = SETUPS[run["method"]]
    cap = run["cap"]
    trainable = {n for n, p in cap.model.named_parameters() if p.requires_grad}
    names = set(cap.before)
    assert trainable == {n for n in names if expect(n)}, "trainable set differs from the method's contract"
    assert trainable, "nothing trains"
    for n in names:
        moved = not torch.equal(cap.before[n], cap.after[n])
        if n in trainable:
            # LoRA B starts at zero; A gets no gradient on step 1 but does on step 2; every trainable tensor moves.
            assert moved, f"{n} is trainable but did not change in 2 steps"
        else:
            assert not moved, f"{n} is frozen but changed"
    assert run["res"].summary["params"]["trainable"] == sum(
        p.numel() for p in cap.model.parameters() if p.requires_grad)


def test_loss_falls_on_memorisable_set(run):
    s = run["res"].summary
    assert s["loss_last"] < 0.95 * s["loss_first"], (s["loss_first"], s["loss_last"])


def test_save_load_identical_and_merge_matches(run):
    method = get(run["method"])
    cfg = run["cfg"]
    tok_batch = probe_batch(_tokenizer(run))
    trained = logits_of(run["cap"].model, tok_batch)
    _, loaded = load_for_training(cfg)
    model = method.load_trained(loaded, run["res"].run_dir / method.artifact, cfg.method)
    reloaded = logits_of(model, tok_batch)
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)
    merged = method.merge(model)
    if merged is None:
        assert method.merge_unsupported_reason and len(method.merge_unsupported_reason) > 40
        return
    assert method.merge_unsupported_reason is None
    assert not hasattr(merged, "peft_config"), "merge must return a plain transformers model"
    atol = 2e-4 if run["method"] == "qlora" else 2e-5
    torch.testing.assert_close(logits_of(merged, tok_batch), reloaded, atol=atol, rtol=1e-4)


def test_batch4_equals_batch1_ga4(run):
    a = [r["loss"] for r in read_metrics(run["res"].run_dir / "metrics.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_metrics(run["res_ga"].run_dir / "metrics.jsonl") if "loss" in r]
    assert len(a) == len(b) == STEPS
    # Same samples per optimizer step; only padding and summation order differ.
    tol = 5e-3 if run["method"] == "qlora" else 1e-3
    for x, y in zip(a, b):
        assert abs(x - y) <= tol * abs(x), (a, b)


def _tokenizer(run):
    from glmtune.models.load import load_tokenizer

    return load_tokenizer(run["res"].run_dir / "tokenizer")
