"""The Method protocol and its registry: the one place a method name is matched.

A method turns a loaded base model into a trainable one (`prepare`), saves only what it trained
(`save_trained`), puts it back on a fresh base (`load_trained`), and merges it into plain weights
where that is possible (`merge` returns None when it is not, e.g. prefix tuning).

It also carries what the other stages ask about it, so they loop over the registry instead of matching
names: config validation (`config_cls`, dispatched on `method.name` by `glmtune.config.schema`), the
learning-rate range and epoch advice (plan/advice.py, plan/preflight.py), the trainable-parameter,
weight and activation terms of the memory estimate (plan/memory.py, plan/export_memory.py), the FLOPs
factors (plan/measure.py) and whether it is a prefix method (serve/batching.py). A new method is one
module with a `@register`ed class; see docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from glmtune.config.base import Section
from glmtune.registry import METHODS


class Method:
    """Base of every method: the hooks most methods leave alone have their defaults here."""

    name: ClassVar[str]
    config_cls: ClassVar[type[Section]]
    artifact: ClassVar[str]  # run-folder subfolder holding what was trained: "adapter" or "model"
    freezes_base: ClassVar[bool]  # True when base weights stay frozen (they may then be loaded in half precision)
    merge_unsupported_reason: ClassVar[str | None] = None  # None when `merge` works
    default: ClassVar[bool] = False  # the method `method.*` overrides without `method.name` mean (one is)

    # ---- what plan and serve ask (defaults fit a frozen-base adapter method) ----------------------------
    label: ClassVar[str] = ""  # human name in plan advice ("QLoRA 4-bit"); the registry name when empty
    lr_range: ClassVar[tuple[float, float, float]] = (1e-4, 2e-4, 5e-4)  # (low, recommended, high) train.lr
    is_prefix: ClassVar[bool] = False  # learns key/value positions in front of every prompt (P-Tuning v2)
    updates_base_weights: ClassVar[bool] = False  # trains some of the checkpoint's own weights
    trains_all_weights: ClassVar[bool] = False  # every weight trains (no frozen part at all)
    quantizes_base: ClassVar[bool] = False  # loads the frozen base quantised: plan's memory fallback of last resort
    compute_factor: ClassVar[float] = 1.0  # step time relative to a plain 16-bit forward/backward
    early_stop_on_small_data: ClassVar[bool] = False  # plan advises frequent evals + early stop under 1000 samples

    def memory_setup(self, cfg) -> dict:
        """`glmtune.plan.memory.MemorySetup` fields taken from this method's options (rank, prefix length...)."""
        return {}

    def trainable_params(self, facts, st) -> int:
        """Trainable parameters on a model with `facts` (plan.facts.ModelFacts) under setup `st`."""
        raise NotImplementedError

    def frozen_weight_bytes(self, facts, st, n_train: int) -> float:
        """Bytes of the weights that do not train: the base in its load dtype (an INT4/INT8 ChatGLM-6B checkpoint
        too: glmtune dequantizes it when it converts the checkpoint, models/convert_chatglm6b.py)."""
        n_all = facts.param_count()
        return (n_all - (n_train if self.updates_base_weights else 0)) * st.load_bytes

    def extra_activation_elems(self, facts, st) -> float:
        """Per token and layer, activation elements (compute dtype) this method saves beyond the base layer's."""
        return facts.norms_per_layer * facts.hidden if self.updates_base_weights else 0.0

    def gradient_layers(self, facts, st) -> int:
        """Decoder layers backward runs through (frozen layers below the first trainable one save nothing)."""
        return facts.layers

    def epochs(self, base: int) -> tuple[int, str]:
        """Recommended epochs from the data-size `base` (plan/advice.py), and why."""
        return base, "LoRA on small data: enough passes to fit the format, few enough to stop before memorising"

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


REGISTRY: dict[str, Method] = METHODS  # the one dict, kept in glmtune/registry.py so config reads it without this package


def register(cls):
    """Class decorator: `@register` on a Method subclass with `name` and `config_cls`."""
    if not issubclass(cls, Method):
        raise TypeError(f"{cls.__name__} must subclass glmtune.methods.base.Method")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    tag = cls.config_cls.model_fields["name"].default
    if tag != cls.name:
        raise ValueError(f"{cls.__name__}: config name default {tag!r} != method name {cls.name!r}")
    if cls.default and any(m.default for m in REGISTRY.values()):
        raise ValueError(f"{cls.__name__}: a default method is registered already")
    REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Drop a method registered at runtime (tests)."""
    REGISTRY.pop(name, None)


def default_name() -> str:
    return next(name for name, m in REGISTRY.items() if m.default)


def by_footprint() -> list[str]:
    """Registered names, most weights trained first (full, then partial, adapters, prefixes; else registration
    order): the row order of plan's memory table."""
    order = {n: i for i, n in enumerate(REGISTRY)}
    return sorted(REGISTRY, key=lambda n: (not REGISTRY[n].trains_all_weights, not REGISTRY[n].updates_base_weights,
                                           REGISTRY[n].is_prefix, order[n]))


def label(name: str) -> str:
    return get(name).label or name


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
