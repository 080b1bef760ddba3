"""Trainer callbacks: metrics JSONL, loss-curve PNG, and a completion marker on each checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

COMPLETE = "GLMTUNE_COMPLETE"


class MetricsJsonl(TrainerCallback):
    """Append every log entry (loss, lr, grad norm, eval loss, tokens) to metrics.jsonl; rank 0 only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.start_step = 0  # where this run began (the resumed step), and the tokens seen by then
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        """A resumed run replays the steps after its checkpoint: their old rows go (else they would appear
        twice); a fresh run starts an empty file."""
        self.start_step = state.global_step
        self.start_tokens = int(state.num_input_tokens_seen or 0)
        if not state.is_world_process_zero:
            return
        from glmtune.utils.io import write_jsonl

        kept = [r for r in read_metrics(self.path) if state.global_step and r.get("step", 0) <= state.global_step]
        write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    # split on "\n" only: generated text in a row may hold U+2028 etc., which str.splitlines splits on
    lines = Path(path).read_text("utf-8").split("\n")
    rows = [json.loads(line) for line in lines[:-1] if line.strip()]
    if lines[-1].strip():  # no newline after it: a row cut short by a kill mid-append, unless it parses
        try:
            rows.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return rows


def plot_loss(metrics_path: Path, out_png: Path) -> Path | None:
    """Training (and eval) loss vs step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoints whose save finished (marker present), oldest first."""
    if not ckpt_root.exists():
        return []
    done = [p for p in ckpt_root.glob("checkpoint-*") if (p / COMPLETE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[-1]))


class QuietProgress(ProgressCallback):
    """The usual progress bar, with loss and lr in its postfix instead of a printed dict per step."""

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: logs[k] for k in ("loss", "eval_loss", "learning_rate") if k in logs}
            if shown:
                self.training_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
