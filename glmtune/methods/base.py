"""The Method protocol and its registry: the one place a method name is matched.

A method turns a loaded base model into a trainable one (`prepare`), saves only what it trained
(`save_trained`), puts it back on a fresh base (`load_trained`), and merges it into plain weights
where that is possible (`merge` returns None when it is not, e.g. prefix tuning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from glmtune.config.base import Section


class Method:
    """Base of every method: the hooks most methods leave alone have their defaults here."""

    name: ClassVar[str]
    config_cls: ClassVar[type[Section]]
    artifact: ClassVar[str]  # run-folder subfolder holding what was trained: "adapter" or "model"
    freezes_base: ClassVar[bool]  # True when base weights stay frozen (they may then be loaded in half precision)
    merge_unsupported_reason: ClassVar[str | None] = None  # None when `merge` works

    def quantization(self, cfg, train_cfg) -> Any | None:
        """A transformers quantization config for loading the base, or None."""
        return None

    def config_overrides(self, cfg, family) -> dict:
        """Model-config values to set before the base is built (e.g. ChatGLM's `pre_seq_len`); {} for none."""
        return {}

    def param_groups(self, model, cfg, train_cfg) -> list[dict] | None:
        """Optimizer param groups (each with its own lr / weight_decay), or None for the Trainer's default."""
        return None

    def prepare(self, loaded, cfg, train_cfg) -> Any:
        """Return the model to train (frozen / wrapped / quantised as the method requires)."""
        raise NotImplementedError

    def save_trained(self, model, out_dir: Path) -> None:
        """Write what was trained (adapter or weights) into out_dir."""
        raise NotImplementedError

    def load_trained(self, loaded, trained_dir: Path, cfg) -> Any:
        """Return `loaded.model` with the trained part from trained_dir applied, ready for inference."""
        raise NotImplementedError

    def merge(self, model) -> Any | None:
        """Return a plain transformers model with the trained part folded in, or None if impossible
        (then `merge_unsupported_reason` says why, for the export stage to print)."""
        raise NotImplementedError


REGISTRY: dict[str, Method] = {}


def register(cls):
    """Class decorator: `@register` on a Method subclass with `name` and `config_cls`."""
    if not issubclass(cls, Method):
        raise TypeError(f"{cls.__name__} must subclass glmtune.methods.base.Method")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    tag = cls.config_cls.model_fields["name"].default
    if tag != cls.name:
        raise ValueError(f"{cls.__name__}: config name default {tag!r} != method name {cls.name!r}")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}") from None


def decay_groups(model, lr: float, weight_decay: float, lr_of=lambda name: None) -> list[dict]:
    """Trainable params split into AdamW groups: matrices decay, biases/norms (1-D) do not, as HF Trainer does.
    `lr_of(name)` may give a parameter its own learning rate (LoRA+); params are grouped by (lr, decay)."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (lr_of(name) or lr, weight_decay if p.ndim >= 2 else 0.0)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1]} for k, ps in sorted(groups.items())]


def trainable_summary(model) -> dict:
    """Count trainable vs all parameters (4-bit packed weights counted by their logical size)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if hasattr(p, "quant_state") or p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "percent": round(100.0 * trainable / max(total, 1), 4)}
