"""Every shipped YAML validates through load_config and opens with the command that runs it
(litgpt test_config_hub.py); every method has a tiny, a GLM-4-9B and a ChatGLM3-6B example."""

from pathlib import Path

import pytest

from glmtune.config import load_config
from glmtune.methods import REGISTRY, get

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "glmtune" / "configs").rglob("*.yaml")) + sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates(path):
    cfg = load_config(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert "glmtune " in header, f"{path}: the opening comment must give the command that runs it"
    first = lines[0]
    if path.parent.name in ("tiny", "glm4_9b", "chatglm3_6b"):
        assert cfg.method.name == path.stem
        assert f"glmtune train {path.relative_to(ROOT)}" in first
    if path.parent.name == "chatglm3_6b":
        assert cfg.model.trust_remote_code


@pytest.mark.parametrize("size", ["tiny", "glm4_9b", "chatglm3_6b"])
def test_every_method_has_an_example(size):
    assert {p.stem for p in (ROOT / "glmtune" / "configs" / size).glob("*.yaml")} == set(REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_shipped_glm4_9b_settings_train_on_the_tiny_model(method, memo_file, tmp_path):
    """The 9B config as shipped (bf16, checkpointing, chunked loss, length grouping, validation, its method
    keys), with only the model, data and length of run swapped: every combination a user gets really trains."""
    from glmtune.train.callbacks import read_metrics
    from glmtune.train.trainer import train

    path = ROOT / "glmtune" / "configs" / "glm4_9b" / f"{method}.yaml"
    cfg = load_config(path, ["model.path=tiny:glm4", f"data.train={memo_file}", f"data.validation={memo_file}",
                             f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=2",
                             "train.grad_accum=1", "train.eval_steps=2", "train.resume=never", "plan.strict=false"])
    assert cfg.train.gradient_checkpointing and cfg.train.precision in ("bf16", "pure_bf16")
    res = train(cfg, quiet=True)
    s = res.summary
    assert s["steps"] == 2 and s["eval_loss"] is not None and s["loss_first"] == s["loss_first"]  # not NaN
    assert (res.run_dir / get(method).artifact).is_dir()
    assert any("eval_loss" in r for r in read_metrics(res.run_dir / "metrics.jsonl"))
