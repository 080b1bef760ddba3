"""LoRA (Hu et al. 2021) through PEFT, with DoRA, rsLoRA, LoRA+ and modules_to_save."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from glmtune.config.base import Section
from glmtune.errors import MethodError
from glmtune.methods.base import Method, decay_groups, register


class LoraConfig(Section):
    name: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: Literal["all", "attention", "mlp"] | list[str] = Field(
        "all", description="all linear layers but the head; attention; mlp; or explicit module names."
    )
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (Liu et al. 2024).")
    use_rslora: bool = Field(False, description="rsLoRA scaling alpha/sqrt(r) (Kalajdzievski 2023).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: lr of B matrices = ratio × lr (Hayou et al. 2024; 16 is typical)."
    )
    modules_to_save: list[str] = Field(default_factory=list, description="Extra modules trained in full, e.g. lm_head.")


# Output heads by name, for models whose code does not declare them through `get_output_embeddings()`
# (ChatGLM's remote code calls its head `transformer.output_layer` and declares nothing).
HEAD_NAMES = ("lm_head", "output_layer", "embed_out")


def all_linear_targets(model) -> list[str]:
    """`targets: all`: every linear layer but the output head (embeddings are never linear layers here).

    PEFT's own "all-linear" drops only what `model.get_output_embeddings()` returns, so on a model that does not
    declare its head (remote-code ChatGLM) it adapts the head too; we list the names ourselves instead. Leaf
    names (`q_proj`, `dense`, ...) when they never name a head too, else full module paths."""
    import torch.nn as nn

    skip = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        try:
            mod = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            mod = None
        if mod is not None:
            skip.add(id(mod))
    leaves: set[str] = set()
    full: list[str] = []
    heads: set[str] = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):  # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear
            continue
        leaf = name.rsplit(".", 1)[-1]
        if id(mod) in skip or leaf in HEAD_NAMES:
            heads.add(leaf)
            continue
        leaves.add(leaf)
        full.append(name)
    if not leaves:
        raise MethodError(f"{type(model).__name__}: no linear layer but the head for `targets: all`")
    return sorted(full) if leaves & heads else sorted(leaves)


def target_modules(targets, family, model=None) -> str | list[str]:
    if targets == "all":
        return "all-linear" if model is None else all_linear_targets(model)
    if targets == "attention":
        return list(family.attention_targets)
    if targets == "mlp":
        return list(family.mlp_targets)
    return list(targets)


def peft_lora_config(cfg, family, model=None):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(cfg.targets, family, model),
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        modules_to_save=cfg.modules_to_save or None,
    )


def wrap_with_lora(model, cfg, family, precision: str = "fp32"):
    from peft import get_peft_model

    # PEFT upcasts bf16/fp16 adapters to fp32 by default (mixed precision); pure_bf16 means bf16 adapters too.
    return get_peft_model(model, peft_lora_config(cfg, family, model), autocast_adapter_dtype=precision != "pure_bf16")


def loraplus_groups(model, cfg, train_cfg) -> list[dict] | None:
    """LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): the B matrices
    learn `loraplus_lr_ratio` times faster than A, which the paper shows is the efficient choice for
    wide models. Mirrors peft.optimizers.create_loraplus_optimizer, but returns groups for our Trainer."""
    if cfg.loraplus_lr_ratio is None:
        return None
    ratio = cfg.loraplus_lr_ratio

    def lr_of(name: str):
        return train_cfg.lr * ratio if ("lora_B" in name or "lora_embedding_B" in name) else None

    return decay_groups(model, train_cfg.lr, train_cfg.weight_decay, lr_of)


def targeted_shapes(facts, targets) -> list[tuple[str, int, int]]:
    """(name, in, out) of the linear layers per decoder layer that `targets` adapts (plan.facts.ModelFacts)."""
    shapes = facts.linear_shapes()
    if targets == "all":
        return shapes
    if targets in ("attention", "mlp"):
        n_attn = 2 if facts.family == "chatglm" else 4
        return shapes[:n_attn] if targets == "attention" else shapes[n_attn:]
    wanted = set(targets)
    return [s for s in shapes if s[0] in wanted]


def lora_memory_setup(cfg) -> dict:
    targets = cfg.targets
    return {"lora_rank": cfg.rank, "lora_dropout": cfg.dropout,
            "lora_targets": targets if isinstance(targets, str) else tuple(targets)}


def lora_trainable_params(facts, st) -> int:
    return facts.layers * sum(st.lora_rank * (a + b) for _, a, b in targeted_shapes(facts, st.lora_targets))


def lora_activation_elems(facts, st) -> float:
    """The rank-r intermediate per adapted module; with dropout > 0 a dropped copy of each module's input."""
    mods = targeted_shapes(facts, st.lora_targets)
    return st.lora_rank * len(mods) + (sum(a for _, a, _ in mods) if st.lora_dropout > 0 else 0)


def load_adapter(model, adapter_dir: Path, adapter_name: str = "default", trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)


@register
class LoraMethod(Method):
    name: ClassVar[str] = "lora"
    config_cls: ClassVar[type[Section]] = LoraConfig
    artifact: ClassVar[str] = "adapter"
    freezes_base: ClassVar[bool] = True
    default: ClassVar[bool] = True
    label: ClassVar[str] = "LoRA"
    # Hu et al. 2021 used 2e-4; LLaMA-Factory examples 1e-4; ChatGLM3 finetune_demo lora.yaml 5e-4 at batch 4
    lr_range: ClassVar[tuple[float, float, float]] = (1e-4, 2e-4, 5e-4)
    early_stop_on_small_data: ClassVar[bool] = True

    def memory_setup(self, cfg) -> dict:
        return lora_memory_setup(cfg)

    def trainable_params(self, facts, st) -> int:
        return lora_trainable_params(facts, st)

    def extra_activation_elems(self, facts, st) -> float:
        return lora_activation_elems(facts, st)

    def param_groups(self, model, cfg, train_cfg):
        return loraplus_groups(model, cfg, train_cfg)

    def prepare(self, loaded, cfg, train_cfg):
        if train_cfg.gradient_checkpointing:
            loaded.model.enable_input_require_grads()
        return wrap_with_lora(loaded.model, cfg, loaded.family, train_cfg.precision)

    def save_trained(self, model, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir))

    def load_trained(self, loaded, trained_dir: Path, cfg):
        return load_adapter(loaded.model, trained_dir)

    def merge(self, model):
        return model.merge_and_unload()
