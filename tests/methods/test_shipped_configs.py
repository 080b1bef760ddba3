"""Every shipped YAML validates through load_config and opens with the command that runs it
(litgpt test_config_hub.py); every method has a tiny, a GLM-4-9B and a ChatGLM3-6B example."""

from pathlib import Path

import pytest

from glmtune.config import load_config
from glmtune.methods import REGISTRY

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
