"""A finished run's model: its base loaded the way the method trained on it, with the trained part on top.

Every stage that runs a trained model (chat, serve, predict, eval, export's checks, web) loads it here, so
train, eval and export need nothing from serve.
"""

from __future__ import annotations

from glmtune.config.load import ConfigError
from glmtune.run.folder import Run, template_hash


class TemplateMismatch(ConfigError):
    """The base's chat template now differs from the one the run trained with."""


def check_template(tokenizer, run: Run) -> None:
    """Train/serve template drift makes models ramble or never stop: refuse it, naming both hashes."""
    want = run.chat_template_sha256
    if want and template_hash(tokenizer) != want:
        raise TemplateMismatch(
            f"{run.dir} was trained with a different chat template than {run.base} has now "
            f"(sha256 {want[:12]} vs {template_hash(tokenizer)[:12]}). Serve with the run's tokenizer "
            f"({run.dir / 'tokenizer'}) or retrain.")


def load_run_tokenizer(run: Run):
    """The base's tokenizer with the chat template the run trained with (a `model.chat_template` override
    included), checked against the run's template hash."""
    from glmtune.models.load import load_tokenizer

    tok = load_tokenizer(run.base_path, run.trust_remote_code, chat_template=run.config.model.chat_template)
    check_template(tok, run)
    return tok


def load_trained(run: Run):
    """(model with the trained part on, models.load.Loaded of the base) for a finished run."""
    from glmtune.config.schema import ModelSection
    from glmtune.methods import get
    from glmtune.models.load import load, route_family

    cfg = run.config
    method = get(run.method)
    # The run's chat template, a `model.chat_template` override included: serve as it trained.
    base_cfg = ModelSection(path=run.base, trust_remote_code=run.trust_remote_code, dtype=cfg.model.dtype,
                            attn_implementation=cfg.model.attn_implementation, chat_template=cfg.model.chat_template)
    # Load the base the way the method trained on it (quantised for qlora, prefix config for remote-code
    # ptuning), so the trained part goes on without a second load.
    loaded = load(base_cfg, cfg.train.precision if cfg.train.precision == "pure_bf16" else "fp32",
                  quantization_config=method.quantization(cfg.method, cfg.train),
                  config_overrides=method.config_overrides(cfg.method, route_family(run.base_path)))
    check_template(loaded.tokenizer, run)
    return method.load_trained(loaded, run.artifact, cfg.method), loaded


def load_full_precision_adapter(run: Run):
    """The run's adapter on its base loaded unquantised in float32 (what a QLoRA export computes)."""
    from glmtune.config.schema import ModelSection
    from glmtune.methods.lora import load_adapter
    from glmtune.models.load import load

    loaded = load(ModelSection(path=run.base, trust_remote_code=run.trust_remote_code, dtype="float32"))
    return load_adapter(loaded.model, run.artifact).eval()
