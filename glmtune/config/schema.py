"""RunConfig: one typed section per stage of the user's path.

Each field is declared once with its type, default and help (the `description`); checks that concern
one section sit in that section. Checks that need the data or the model (cutoff vs template length,
warm-up share) live in `glmtune.plan`, which reports them with reasons before training.
Sections owned by later stages are declared in config/sections.py (re-exported by evaluate/config.py,
export/config.py, serve/config.py, plan/config.py, train/distributed.py), and the method section by each method
module, found through glmtune/registry.py at validation time: config imports no stage and no method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from glmtune.config.base import Section
from glmtune.config.sections import DistributedSection, EvalSection, ExportSection, PlanSection, ServeSection
from glmtune.registry import default_method, methods


class ModelSection(Section):
    path: str = Field(
        "tiny:glm4",
        description="A checkpoint folder (e.g. ./glm-4-9b-chat-hf), a GGUF file (dequantized once to a cached "
        "fp32 folder) or an embedded tiny model: tiny:glm4 | tiny:glm.",
    )
    gguf_file: str | None = Field(
        None, description="A GGUF file inside the model.path folder (same as model.path=FOLDER/FILE.gguf)."
    )
    trust_remote_code: bool = Field(False, description="Needed for ChatGLM-6B / ChatGLM3-6B remote-code checkpoints.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the base weights are loaded in; auto follows train.precision."
    )
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel.")
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the tokenizer's own (normally leave empty)."
    )

    @model_validator(mode="after")
    def _gguf_in_folder(self):
        # Folded into path once, so every verb (and a reloaded run config) sees one GGUF path.
        if self.gguf_file:
            if Path(self.gguf_file).name != self.gguf_file or not self.gguf_file.lower().endswith(".gguf"):
                raise ValueError(f"model.gguf_file {self.gguf_file!r}: give a .gguf file name inside model.path")
            name, self.gguf_file = self.gguf_file, None  # (assignment re-runs this validator: clear it first)
            self.path = str(Path(self.path) / name)
        return self


class ColumnMap(Section):
    prompt: str = Field("prompt", description="Column holding the user turn (ChatGLM-6B --prompt_column).")
    response: str = Field("response", description="Column holding the answer (--response_column).")
    history: str | None = Field(None, description="Column holding [[q, a], ...] earlier turns (--history_column).")
    system: str | None = Field(None, description="Column holding a system prompt, if any.")


class DataSection(Section):
    train: str = Field(
        "demo", description="Training JSONL/JSON file, or 'demo' for the bundled data of the default task "
        "(glmtune.tasks).")
    validation: str | None = Field(None, description="Validation file; if empty, val_size is split off train.")
    test: str | None = Field(None, description="Held-out test file used by predict/eval; if empty, test_size is split off.")
    format: Literal["auto", "messages", "conversations", "sharegpt", "alpaca", "columns"] = Field(
        "auto", description="Record format; auto detects it per record."
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column names for format=columns.")
    val_size: float = Field(0.1, ge=0, description="Validation share (<1) or count (>=1) split off train.")
    test_size: float = Field(0.0, ge=0, description="Test share (<1) or count (>=1) split off train.")
    split_seed: int = Field(0, description="Seed of the train/validation/test split.")
    cutoff_len: int = Field(2048, ge=8, description="Maximum tokens per rendered sample (prompt + answer).")
    overlength: Literal["drop", "truncate", "error"] = Field(
        "truncate",
        description="Samples longer than cutoff_len: drop them, truncate (oldest turns, then the longest "
        "prompt text; never template or stop tokens), or stop with an error. Every one is counted.",
    )
    loss_on: Literal["all_assistant", "last_turn"] = Field(
        "all_assistant", description="Which assistant turns are supervised."
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="Bad records stop training (error) or are skipped and counted (skip)."
    )
    max_samples: int | None = Field(None, ge=1, description="Use at most this many training samples.")


class TrainSection(Section):
    output_dir: str = Field("runs/demo", description="Run folder: config, adapter, checkpoints, metrics, plots.")
    epochs: float = Field(3.0, gt=0, description="Training epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Per-device micro-batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
    ] = Field("cosine", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps (wins over warmup_ratio when > 0).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Warm-up as a share of all steps.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    precision: Literal["fp32", "fp16", "bf16", "pure_bf16"] = Field(
        "fp32", description="fp32; fp16/bf16 mixed (trainable params kept fp32); pure_bf16 (everything bf16)."
    )
    seed: int = Field(42, description="Random seed.")
    logging_steps: int = Field(1, ge=1, description="Log loss every N steps.")
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N steps.")
    save_total_limit: int | None = Field(3, ge=1, description="Keep at most this many checkpoints.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on the validation split every N steps.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evals without improvement.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune embedding noise alpha.")
    group_by_length: bool = Field(True, description="Batch samples of similar length to cut padding.")
    packing: bool = Field(
        False, description="Pack each micro-batch's samples into rows of up to data.cutoff_len tokens; position ids "
        "restart per sample so attention stays within each sample (no cross-sample leakage)."
    )
    loss_chunk_size: int = Field(
        1024, ge=0, description="Compute LM-head + loss in chunks of this many supervised tokens (0 = plain loss)."
    )
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="auto: continue from the last complete checkpoint; never; or a checkpoint path."
    )
    hf_extra: dict = Field(default_factory=dict, description="Extra transformers.TrainingArguments (escape hatch).")

    @model_validator(mode="after")
    def _eval_for_plateau(self):
        if self.scheduler == "reduce_lr_on_plateau" and not self.eval_steps:
            raise ValueError("scheduler reduce_lr_on_plateau needs eval loss: set train.eval_steps")
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("train.early_stopping_patience needs train.eval_steps")
        return self


class RunConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    # Any registered method's config section, picked by `method.name` (the registry is read at validation time,
    # so methods registered at runtime validate too); SerializeAsAny dumps the chosen class's own fields.
    method: SerializeAsAny[Section] = Field(default_factory=lambda: methods()[default_method()].config_cls())
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    plan: PlanSection = Field(default_factory=PlanSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name(cls, value):
        registry = methods()
        if isinstance(value, dict):
            name = value.get("name", default_method())
            if name not in registry:
                raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(registry))}")
            return registry[name].config_cls.model_validate(value)
        if isinstance(value, Section) and getattr(value, "name", None) not in registry:
            raise ValueError(f"unknown method {getattr(value, 'name', None)!r}; registered: {sorted(registry)}")
        return value
