"""Serving refuses a run whose base tokenizer's chat template changed since training."""

import pytest

from glmtune.models.load import load_tokenizer
from glmtune.run.folder import Run, template_hash
from glmtune.run.load import TemplateMismatch, check_template


def test_same_template_passes_changed_template_refused(tiny_glm4, tmp_path):
    tok = load_tokenizer(tiny_glm4)
    run = Run(tmp_path, "lora", "adapter", str(tiny_glm4), chat_template_sha256=template_hash(tok))
    check_template(tok, run)
    tok.chat_template = tok.chat_template.replace("<|assistant|>", "<|assistant|>\n")
    with pytest.raises(TemplateMismatch, match="different chat template"):
        check_template(tok, run)


def test_tokenizer_without_template_is_a_one_line_config_error(tiny_glm4, tmp_path):
    import shutil

    from glmtune.config.load import ConfigError

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_glm4, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    import json

    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="no chat_template"):
        load_tokenizer(folder)
