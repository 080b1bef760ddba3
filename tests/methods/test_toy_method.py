"""A method registered at runtime, from this one file, works through plan, train, serve and export.

The toy method is LayerNorm tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention: Towards Efficient
Multi-Modal LLM Finetuning"): only the normalisation weights train. Nothing in glmtune/ names it: config
validation, the plan's memory table and advice, the trainer, the run folder, the engine and the export all
reach it through `glmtune.methods.REGISTRY`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from glmtune.config.base import Section
from glmtune.methods.base import Method, register, unregister

pytestmark = pytest.mark.slow


class NormsConfig(Section):
    name: Literal["norms"] = "norms"


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


class NormsMethod(Method):
    name: ClassVar[str] = "norms"
    config_cls: ClassVar[type[Section]] = NormsConfig
    artifact: ClassVar[str] = "model"
    freezes_base: ClassVar[bool] = False
    label: ClassVar[str] = "LayerNorm tuning"
    lr_range: ClassVar[tuple[float, float, float]] = (1e-4, 1e-3, 1e-2)
    updates_base_weights: ClassVar[bool] = True

    def trainable_params(self, facts, st) -> int:
        return (facts.layers * facts.norms_per_layer + 1) * facts.hidden

    def prepare(self, loaded, cfg, train_cfg):
        for n, p in loaded.model.named_parameters():
            p.requires_grad_(_is_norm(n))
        return loaded.model

    def save_trained(self, model, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(out_dir / "norms.safetensors"))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        import torch
        from safetensors.torch import load_file

        params = dict(loaded.model.named_parameters())
        with torch.no_grad():
            for n, t in load_file(str(Path(trained_dir) / "norms.safetensors")).items():
                params[n].copy_(t.to(params[n].dtype))
        return loaded.model

    def merge(self, model):
        return model


@pytest.fixture(scope="module")
def norms_method():
    register(NormsMethod)
    yield
    unregister("norms")


def _chat_data(path: Path, n: int = 12) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"数字 {i} 的下一个是?"},
                          {"role": "assistant", "content": f"{i + 1}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_runtime_method_plans_trains_serves_exports(norms_method, tiny_glm4, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from glmtune.cli import main
    from glmtune.inference.engine import HFEngine

    data = _chat_data(tmp_path / "train.jsonl")
    run = tmp_path / "run"
    common = [f"model.path={tiny_glm4}", f"data.train={data}", "data.val_size=0", f"train.output_dir={run}",
              "method.name=norms"]
    # plan: the memory table has a row for it, the advice uses its learning-rate range
    assert main(["plan", *common, "--json", "--gpu", "RTX4090-24GB", "--out", str(tmp_path / "plan")]) == 0
    plan = json.loads(capsys.readouterr().out)
    row = plan["memory"]["norms"]
    assert row["trainable_params"] == NormsMethod().trainable_params(_facts(tiny_glm4), None) and row["fits"]
    assert any(a["key"] == "train.lr" and a["value"] == 1e-3 for a in plan["advice"])
    # train
    assert main(["train", *common, "train.max_steps=3", "train.batch_size=4", "train.lr=5e-2",
                 "train.warmup_ratio=0", "train.save_steps=1000"]) == 0
    meta = json.loads((run / "method.json").read_text())
    assert (meta["method"], meta["artifact"]) == ("norms", "model")
    trained = load_file(str(run / "model" / "norms.safetensors"))
    assert trained and all(_is_norm(n) for n in trained)
    base = AutoModelForCausalLM.from_pretrained(tiny_glm4)
    base_params = dict(base.named_parameters())
    assert any(not torch.equal(t, base_params[n].detach()) for n, t in trained.items())  # it did train
    # serve: the engine loads base + norms and answers
    engine = HFEngine.from_run(run)
    answer = engine.generate([[{"role": "user", "content": "数字 3 的下一个是?"}]], max_new_tokens=4)[0]
    assert answer.completion_tokens > 0
    served = dict(engine.model.named_parameters())
    assert all(torch.equal(served[n].detach().float(), t.float()) for n, t in trained.items())
    # export: merged through the method's own merge(), verified, loadable by transformers
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    merged = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    assert all(torch.allclose(merged[n].detach().float(), t.float()) for n, t in trained.items())


def _facts(model_dir):
    from glmtune.plan.facts import model_facts

    return model_facts(str(model_dir))
