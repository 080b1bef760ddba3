"""Serving refuses a run whose base tokenizer's chat template changed since training."""

import pytest

from glmtune.models.load import load_tokenizer
from glmtune.serve.engine import TemplateMismatch, check_template
from glmtune.train.trainer import template_hash


def test_same_template_passes_changed_template_refused(tiny_glm4, tmp_path):
    tok = load_tokenizer(tiny_glm4)
    meta = {"chat_template_sha256": template_hash(tok), "base": str(tiny_glm4)}
    check_template(tok, meta, tmp_path)
    tok.chat_template = tok.chat_template.replace("<|assistant|>", "<|assistant|>\n")
    with pytest.raises(TemplateMismatch, match="different chat template"):
        check_template(tok, meta, tmp_path)
