"""Generation-based eval during training: every N steps, answer a few validation prompts and log
format validity and per-field exact match next to the loss.

Why: for structured answers the loss says little about whether the model has learnt the format
(a model can reach low loss and still emit `语速:3;停顿:` and stop). LLaMA-Factory's
`predict_with_generate` runs only at the end (and slowly, LF#5265); ChatGLM's scripts generate with the
full eval set. A handful of greedy generations every N steps is cheap and shows when the format is
learnt, and when over-training starts to hurt it.

Logging: if the trainer is attached (`callback.attach(trainer)`, done by glmtune's trainer) the
metrics go through `trainer.log`, i.e. into `state.log_history`, metrics.jsonl, TensorBoard and every
other logging callback. Without it they are appended to `state.log_history` and merged into the next
`on_log` payload seen by callbacks that run after this one.

Keys: `gen_format_validity`, `gen_exact_match` (mean over fields), `gen_exact_match/<field>`,
`gen_samples`. Under DeepSpeed ZeRO-3 / FSDP every rank must take part in `generate`, so all ranks
generate and only the main process logs.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback

__all__ = ["GenerationEvalCallback"]


class GenerationEvalCallback(TrainerCallback):
    def __init__(self, tokenizer, conversations: Sequence, every_n_steps: int, max_new_tokens: int = 64,
                 field_spec=None):
        """`conversations`: `Conversation`s or message lists ending with the reference assistant turn.
        `field_spec`: a `FieldSpec`, a built-in spec's name or YAML path; None logs only the non-empty rate.
        """
        from glmtune.evaluate.fields import FieldSpec

        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.field_spec = FieldSpec.load(field_spec) if isinstance(field_spec, str) else field_spec
        self.prompts: list[list[dict]] = []
        self.references: list[str] = []
        for conv in conversations:
            msgs = getattr(conv, "messages", conv)
            if not msgs or msgs[-1]["role"] != "assistant":
                raise ValueError("each validation conversation must end with the reference assistant answer")
            self.prompts.append([dict(m) for m in msgs[:-1]])
            self.references.append(msgs[-1]["content"])
        if not self.prompts:
            raise ValueError("GenerationEvalCallback needs at least one validation conversation")
        self.trainer = None
        self._pending: dict | None = None
        self.history: list[dict] = []  # every measurement, with its step

    def attach(self, trainer) -> GenerationEvalCallback:
        self.trainer = trainer
        return self

    def generate(self, model) -> list[str]:
        """Greedy answers of `model` (as it is now) for the validation prompts.

        Through the serving engine (same rendering as training, same stop ids, and the one generation path
        that keeps a P-Tuning prefix: transformers' generate() drops PEFT's prefix from 5.24 on)."""
        from glmtune.models.families import family_of
        from glmtune.inference.engine import HFEngine

        was_training = model.training
        engine = HFEngine(model, self.tokenizer, family_of(getattr(model.config, "model_type", None)))
        try:
            outs = engine.generate(self.prompts, max_new_tokens=self.max_new_tokens, temperature=0.0)
        finally:
            engine.close()
            model.train(was_training)
        return [c.text for c in outs]

    def measure(self, model) -> dict:
        """Generate and score; returns the log dict (also usable outside training)."""
        preds = self.generate(model)
        logs: dict = {"gen_samples": len(preds), "gen_nonempty": sum(bool(p) for p in preds) / len(preds)}
        if self.field_spec is not None:
            from glmtune.evaluate.fields import score_fields

            s = score_fields(preds, self.references, self.field_spec)
            logs["gen_format_validity"] = s["format_validity"]
            ems = {name: m["exact_match"] for name, m in s["fields"].items() if m["exact_match"] is not None}
            logs["gen_exact_match"] = sum(ems.values()) / len(ems) if ems else None
            logs.update({f"gen_exact_match/{k}": v for k, v in ems.items()})
        self.last_predictions = preds
        return {k: v for k, v in logs.items() if v is not None}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step == 0 or state.global_step % self.every_n_steps:
            return control
        logs = self.measure(model)
        self.history.append({**logs, "step": state.global_step})
        if not state.is_world_process_zero:
            return control
        if self.trainer is not None:
            # Trainer.log's handler clears control.should_log; keep the loss log due at this step.
            due = control.should_log
            self.trainer.log(dict(logs))
            control.should_log = due
        else:
            state.log_history.append({**logs, "step": state.global_step})
            self._pending = logs
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None and self.trainer is None:
            logs.update(self._pending)
            self._pending = None
        return control
