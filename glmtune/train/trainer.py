"""RunConfig + method -> transformers.Trainer -> run folder.

The run folder is the contract with later stages; its layout lives in glmtune/run/folder.py (the file names
used here come from there). Every file is written atomically; checkpoints get a completion marker and resume
uses only complete ones, so a crash or Ctrl-C loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from glmtune.config.load import ConfigError
from glmtune.methods.loading import load_for_training, mixed_half  # noqa: F401  (also used by plan --measure)
from glmtune.run.folder import CHECKPOINTS, FORGETTING
from glmtune.utils.io import atomic_dir, atomic_write_json, atomic_write_text, write_jsonl


class DivergedError(ConfigError):
    """Training produced a non-finite loss or weight: the run stops, naming the step, and saves nothing."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


def check_precision(precision: str) -> None:
    import torch

    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (fp16 autocast is not supported for training on "
                         "CPU); use bf16 or fp32 on this machine")
    if precision in ("bf16", "pure_bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision={precision}: this GPU has no bf16 support; use fp16 or fp32")


def check_inputs(cfg) -> None:
    """Every path the run needs, checked before anything is written: one ConfigError naming the setting.

    (A run that fails on a missing file should not leave a run folder behind that looks started.)
    """
    from glmtune.models.load import resolve_path

    d = cfg.data
    for key in ("train", "validation", "test"):
        value = getattr(d, key)
        if value is None or value == "demo":
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"data.{key}: {value}: file not found")
        if not path.is_file():
            raise ConfigError(f"data.{key}: {value}: is a folder, not a data file")
    out = Path(cfg.train.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir: {out} is a file; give a folder (it is created if missing)")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"train.output_dir: {out} cannot be created: {above} is a file")
    try:
        resolve_path(cfg.model.path)
    except (FileNotFoundError, ValueError) as err:  # no config.json there; an unknown tiny:NAME
        msg = str(err)
        raise ConfigError(msg if msg.startswith("model.path") else f"model.path {cfg.model.path!r}: {msg}") from None
    r = cfg.train.resume
    if r not in ("auto", "never") and not Path(r).is_dir():
        raise ConfigError(f"train.resume: checkpoint folder {r} not found")


def check_finite_weights(model, step: int, when: str) -> None:
    """Raise DivergedError if a trainable weight holds inf/nan (checked before any checkpoint or result is saved)."""
    import torch

    bad = [n for n, p in model.named_parameters() if p.requires_grad and p.numel() and not bool(torch.isfinite(p).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DivergedError(f"training diverged by step {step}: trainable weight(s) {', '.join(bad[:3])}{more} hold "
                            f"inf/nan; nothing was saved {when}. Lower train.lr or check the data.")


def rotate_complete_checkpoints(ckpt_root: Path, limit: int | None, newest: Path, best: str | None) -> None:
    """transformers' checkpoint rotation, run only once the newest checkpoint is complete, and deleting safely.

    HF rotates inside its own save, before our completion marker exists, so a kill right then could leave no
    complete checkpoint at all with save_total_limit=1. Here `newest` (just completed) and the best one are kept,
    and each deleted folder loses its marker first, so a kill mid-delete never leaves a half folder that
    looks complete.
    """
    import shutil

    from transformers.trainer_utils import sort_checkpoints

    from glmtune.train.callbacks import COMPLETE

    if not limit or not (Path(newest) / COMPLETE).exists():
        return
    ckpts = sort_checkpoints(str(ckpt_root), use_mtime=True)
    if len(ckpts) <= limit:
        return
    protected = {str(newest)} | ({str(Path(best))} if best else set())
    remaining = len(ckpts)
    for ckpt in ckpts:
        if remaining <= max(limit, len(protected)):
            break
        if ckpt in protected:
            continue
        (Path(ckpt) / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(ckpt, ignore_errors=True)
        remaining -= 1


def training_arguments(cfg, out: Path, n_train: int, world: int = 1, has_val: bool = True):
    """The one place our TrainSection becomes HF TrainingArguments (`has_val`: a validation split exists)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    kwargs = dict(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else None,
        weight_decay=t.weight_decay,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        report_to=["tensorboard"],
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        neftune_noise_alpha=t.neftune_alpha,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        include_num_input_tokens_seen="non_padding",
    )
    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name gone in v6)
    ckpt = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    kwargs[ckpt] = t.gradient_checkpointing
    kwargs[f"{ckpt}_kwargs"] = {"use_reentrant": False} if t.gradient_checkpointing else None
    if t.max_grad_norm == 0:
        kwargs["max_grad_norm"] = 0.0
    if t.eval_steps and has_val:
        kwargs.update(eval_strategy="steps", eval_steps=t.eval_steps)
        if t.early_stopping_patience:
            kwargs.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                          save_steps=t.eval_steps)
    if world > 1:
        from glmtune.train.launch import engine_kwargs

        kwargs.update(engine_kwargs(cfg, world))  # gloo on CPU; DeepSpeed JSON or FSDP settings
    kwargs.update(t.hf_extra)
    return TrainingArguments(**kwargs)


def make_trainer_class():
    from transformers import Trainer

    from glmtune.train.callbacks import COMPLETE
    from glmtune.models.loss import causal_lm_loss_sum, plain_loss_sum

    class GlmTrainer(Trainer):
        """HF Trainer with the supervised-only chunked loss and checkpoint completion markers."""

        loss_is_scaled_for_ga = True  # we divide by the tokens of the whole accumulated batch ourselves
        loss_chunk: int = 1024
        whole_forward: bool = False
        param_groups: list[dict] | None = None  # from Method.param_groups (e.g. LoRA+); None = HF default

        def create_optimizer(self, model=None):
            if self.optimizer is None and self.param_groups:
                # HF picks the optimizer class and its betas/eps from TrainingArguments; the method's groups
                # carry their own lr / weight_decay, and the scheduler scales each group's lr alike.
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model if model is None else model)
                self.optimizer = cls(self.param_groups, **kwargs)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.whole_forward:
                loss_sum, n = plain_loss_sum(model, inputs)
            else:
                loss_sum, n = causal_lm_loss_sum(model, inputs, self.loss_chunk)
            if num_items_in_batch is None or not model.training:
                loss = loss_sum / max(n, 1)
            else:
                loss = loss_sum / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            import torch

            loss = super().training_step(model, inputs, num_items_in_batch)
            # One sync per micro-batch; transformers already pays one for its nan/inf logging filter, which
            # would otherwise hide the bad loss and train on to an all-NaN result that exits 0.
            if not bool(torch.isfinite(loss).all()):
                raise DivergedError(
                    f"training diverged at step {self.state.global_step + 1}: the loss is {loss.item()} "
                    f"(not finite) with train.lr={self.args.learning_rate}; nothing was saved from this run after its "
                    "last checkpoint. Lower train.lr, keep train.max_grad_norm on, or check the data.")
            return loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            import torch

            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def _save_checkpoint(self, model, trial):
            check_finite_weights(self.model, self.state.global_step, "as a checkpoint")
            limit = self.args.save_total_limit
            self.args.save_total_limit = None  # HF would rotate before the new checkpoint is marked complete
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if self.args.should_save:
                ckpt = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                atomic_write_text(ckpt / COMPLETE, json.dumps({"step": self.state.global_step, "time": time.time()}))
                rotate_complete_checkpoints(Path(self.args.output_dir), limit, ckpt, self.state.best_model_checkpoint)

    return GlmTrainer


def resolve_resume(cfg, out: Path) -> str | None:
    from glmtune.train.callbacks import COMPLETE, complete_checkpoints

    r = cfg.train.resume
    if r == "never":
        return None
    if r == "auto":
        done = complete_checkpoints(out / CHECKPOINTS)
        if done:
            return str(done[-1])
        partial = sorted((out / CHECKPOINTS).glob("checkpoint-*")) if (out / CHECKPOINTS).is_dir() else []
        if partial and int(os.environ.get("RANK", "0")) == 0:
            print(f"train.resume=auto: no complete checkpoint in {out / 'checkpoints'} ({len(partial)} folder(s) "
                  f"without the {COMPLETE} marker: saves cut short); starting from step 0", flush=True)
        return None
    if not Path(r).exists():
        raise ConfigError(f"train.resume: checkpoint {r} not found")
    return r


def train(cfg, callbacks=(), quiet: bool = False) -> RunResult:
    """Run one training job described by `cfg`; returns the run folder and its summary."""
    result = _train(cfg, callbacks, quiet)
    leave_process_group()
    return result


def leave_process_group() -> None:
    """Many processes: wait until rank 0 has written the run folder, then tear the process group down.

    Without an explicit destroy, interpreter shutdown can free tensors still held by gloo's C++ worker threads
    after Python is half gone; that rank dies with SIGABRT ("terminate called without an active exception")
    and torchrun then kills rank 0 mid-write (seen in CI on the ZeRO-3 test). Only on success: after a failure
    torchrun stops every rank anyway.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _train(cfg, callbacks, quiet: bool) -> RunResult:
    import torch
    from transformers import EarlyStoppingCallback, set_seed

    from glmtune.data.collate import ExampleDataset, PackedCollator, PadCollator
    from glmtune.data.dataset import prepare
    from glmtune.methods import trainable_summary
    from glmtune.models.load import stop_token_ids
    from transformers.trainer_callback import ProgressCallback

    from glmtune.run.folder import (DATA_REPORT, LOSS_PLOT, METRICS, SKIPS, SUMMARY, TENSORBOARD, TOKENIZER,
                                    write_config, write_method)
    from glmtune.train.callbacks import MetricsJsonl, QuietProgress, plot_loss
    from glmtune.train.launch import agree_on_resume, check_resume, full_parameters
    from glmtune.train.preflight import run_preflight

    check_precision(cfg.train.precision)
    check_inputs(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    out = Path(cfg.train.output_dir)
    set_seed(cfg.train.seed)
    method, loaded = load_for_training(cfg)
    tok = loaded.tokenizer
    data = prepare(cfg, tok, stop_token_ids(tok, loaded.family))
    for line in data.report.lines():
        _say(line, quiet, rank)
    run_preflight(cfg, data, loaded, quiet=quiet or rank != 0)

    model = method.prepare(loaded, cfg.method, cfg.train)
    if mixed_half(cfg.train.precision) is not None:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()  # mixed precision: trainable master weights stay fp32
    summary_params = trainable_summary(model)
    _say(f"method {cfg.method.name}: {summary_params['trainable']:,} trainable of {summary_params['total']:,} "
         f"parameters ({summary_params['percent']}%)", quiet, rank)

    if cfg.train.eval_steps and not data.val:
        needs = [k for k, on in (("train.scheduler=reduce_lr_on_plateau", cfg.train.scheduler == "reduce_lr_on_plateau"),
                                 ("train.early_stopping_patience", bool(cfg.train.early_stopping_patience))) if on]
        if needs:
            raise ConfigError(f"{' and '.join(needs)} need(s) a validation split, and there is none: set "
                             "data.validation=FILE or data.val_size (a count or a fraction of data.train)")
        _say(f"train.eval_steps={cfg.train.eval_steps} but there is no validation split (data.validation unset, "
             "data.val_size=0): no evaluation will run", quiet, rank)
    if rank == 0:  # written once data, model, method and settings are known good: a failed start leaves no run folder
        write_config(out, cfg)
    args = training_arguments(cfg, out, len(data.train), world, has_val=bool(data.val))
    Trainer = make_trainer_class()
    metrics_cb = MetricsJsonl(out / METRICS)
    cbs = [metrics_cb, *callbacks]
    if cfg.train.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    # transformers 5 reads the TensorBoard folder from the environment only.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / TENSORBOARD)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ExampleDataset(data.train),
        eval_dataset=ExampleDataset(data.val) if (data.val and cfg.train.eval_steps) else None,
        data_collator=PackedCollator(tok.pad_token_id, cfg.data.cutoff_len) if cfg.train.packing
        else PadCollator(tok.pad_token_id),
        processing_class=tok,
        callbacks=cbs,
    )
    trainer.param_groups = method.param_groups(model, cfg.method, cfg.train)
    if cfg.eval.during_training_every and data.val_conversations:  # every rank generates (ZeRO-3/FSDP need it)
        from glmtune.evaluate.callback import GenerationEvalCallback

        gen_cb = GenerationEvalCallback(tok, data.val_conversations[: cfg.eval.during_training_samples],
                                        cfg.eval.during_training_every, cfg.eval.max_new_tokens, cfg.eval.field_spec)
        trainer.add_callback(gen_cb.attach(trainer))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    # Many processes: DDP/FSDP sync gradients and ZeRO-3 gathers weights through the wrapper's forward, which
    # the split decoder + chunked-head path bypasses; chunk 0 = logits_to_keep through the wrapper.
    trainer.loss_chunk = cfg.train.loss_chunk_size if world == 1 else 0
    trainer.whole_forward = cfg.train.loss_chunk_size == 0 or loaded.family.remote_code
    resume = check_resume(agree_on_resume(resolve_resume(cfg, out)), cfg, world)
    if resume:
        _say(f"resuming from {resume}", quiet, rank)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0

    final_eval = trainer.evaluate() if (data.val and cfg.train.eval_steps) else {}
    with full_parameters(trainer):  # every rank enters: ZeRO-3 gathers its shards here
        check_finite_weights(trainer.model, trainer.state.global_step, f"in {out / method.artifact}")
        if trainer.is_world_process_zero():
            with atomic_dir(out / method.artifact) as staging:
                method.save_trained(trainer.model, staging)
    if not trainer.is_world_process_zero():
        return RunResult(out, {})
    with atomic_dir(out / TOKENIZER) as staging:
        tok.save_pretrained(staging)
    write_method(out, method=cfg.method.name, artifact=method.artifact, base=str(loaded.path),
                 family=loaded.family.name, trust_remote_code=cfg.model.trust_remote_code, tokenizer=tok)
    write_jsonl(out / SKIPS, [s.as_dict() for s in data.report.skips])
    atomic_write_json(out / DATA_REPORT, {**data.report.summary(), "train": len(data.train),
                                                 "validation": len(data.val), "test": len(data.test)})
    hist = [r for r in trainer.state.log_history if "loss" in r]
    tokens_seen = int(trainer.state.num_input_tokens_seen or 0)
    # After a resume the wall time covers only this run's steps: divide only this run's tokens by it.
    tokens_run = tokens_seen - metrics_cb.start_tokens
    summary = {
        "method": cfg.method.name,
        "params": summary_params,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "loss_first": hist[0]["loss"] if hist else None,
        "loss_last": hist[-1]["loss"] if hist else None,
        "train_loss": result.training_loss,
        "eval_loss": final_eval.get("eval_loss"),
        "wall_s": round(wall, 2),
        "tokens_seen": tokens_seen,
        "steps_this_run": trainer.state.global_step - metrics_cb.start_step,
        "tokens_this_run": tokens_run,
        "tokens_per_s": round(tokens_run / wall, 1) if wall > 0 and tokens_run else None,
        "world_size": world,
        "effective_batch": cfg.train.batch_size * cfg.train.grad_accum * world,
        "resumed_from": resume,
        "data": data.report.summary(),
    }
    if cfg.eval.forgetting:
        summary["forgetting"] = forgetting_check(cfg, trainer.model, tok, loaded, out)
    atomic_write_json(out / SUMMARY, summary)
    plot_loss(out / METRICS, out / LOSS_PLOT)
    return RunResult(out, summary)


def forgetting_check(cfg, model, tok, loaded, out: Path) -> dict:
    """Bundled general prompts, base vs tuned, at the end of training (catastrophic forgetting shows here); red/green line."""
    from peft import PeftModel

    from glmtune.evaluate.forgetting import forgetting_delta, load_items, render_forgetting, score_engine
    from glmtune.inference.engine import HFEngine, is_prompt_learning

    items = load_items(cfg.eval.forgetting_set)
    n_new = cfg.eval.forgetting_max_new_tokens
    tuned = score_engine(HFEngine(model, tok, loaded.family), items, n_new)
    if isinstance(model, PeftModel):
        with model.disable_adapter():  # the base is under the adapter: no second copy in memory
            # a prefix model's engine would put the prefix back (it generates from get_prompt): give it the base
            net = model.get_base_model() if is_prompt_learning(model) else model
            base = score_engine(HFEngine(net, tok, loaded.family), items, n_new)
    else:
        base = score_engine(HFEngine.from_model_dir(str(loaded.path), cfg.model.trust_remote_code), items, n_new)
    result = forgetting_delta(base, tuned, items)
    atomic_write_json(out / FORGETTING, result)
    render_forgetting(result)
    return {k: result[k] for k in ("base_accuracy", "tuned_accuracy", "delta", "lost", "gained")}


def _say(msg: str, quiet: bool, rank: int = 0) -> None:
    if not quiet and rank == 0:
        print(msg, flush=True)

