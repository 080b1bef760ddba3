"""Assemble a plan (data, schedule, memory per method, time, advice, findings) and show it:
rich tables on the terminal, `plan.json`, and `lengths.png` (token-length histogram with the cutoff).

One dict is the source of every view, so the JSON and the terminal never disagree.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from glmtune.plan.memory import GIB


def _stats(cfg, facts):
    """(stats, train count, val count, bad records) with the real template when the model is on disk."""
    from glmtune.data.dataset import split_conversations
    from glmtune.plan.facts import estimate_stats

    train, val, _test, issues = split_conversations(cfg.data)
    convs = train + val
    if facts.folder:
        from glmtune.data.render import Renderer
        from glmtune.data.stats import compute_stats
        from glmtune.models.families import family_of
        from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids

        tok = load_tokenizer(Path(facts.folder), cfg.model.trust_remote_code, cfg.model.chat_template)
        fam = family_of(model_type_of(Path(facts.folder)))
        stats = compute_stats(convs, Renderer(tok, stop_token_ids(tok, fam), cfg.data.loss_on))
    else:
        stats = estimate_stats(convs, facts, cfg.data.loss_on)
    return stats, len(train), len(val), len(issues)


def _largest_batch(facts, method, st, budget, limit: int = 16) -> tuple[int, list[str]]:
    """Largest micro-batch that fits; if none does, first take the free fixes (16-bit base, checkpointing)."""
    from glmtune.plan.memory import estimate

    from glmtune.methods import get

    tried = [(st, [])]
    if st.load_bytes == 4 and not get(method).trains_all_weights:
        st = replace(st, load_bytes=2, compute_bytes=2, mixed=True)
        tried.append((st, ["train.precision=bf16 (16-bit frozen base)"]))
    if not st.gradient_checkpointing:
        tried.append((replace(st, gradient_checkpointing=True),
                      tried[-1][1] + ["train.gradient_checkpointing=true"]))
    for cand, needs in tried:
        fits = [b for b in range(1, limit + 1) if estimate(facts, method, replace(cand, batch=b)).total <= budget]
        if fits:
            return fits[-1], needs
    return 1, tried[-1][1]


def build_plan(cfg, gpu=None, measure: bool = False) -> dict:
    """Everything `glmtune plan` reports, as one JSON-ready dict."""
    from glmtune.plan.advice import advise, recommend_cutoff
    from glmtune.plan.facts import model_facts
    from glmtune.plan.measure import measure_training, stated_tokens_per_second
    from glmtune.methods.base import by_footprint
    from glmtune.plan.memory import cheapest_fix, estimate, parse_gpu, setup_from_config
    from glmtune.plan.preflight import preflight
    from glmtune.plan.schedule import length_report, schedule

    gpu = gpu or parse_gpu(cfg.plan.gpu, cfg.plan.gpu_mem_gb)
    facts = model_facts(cfg.model.path)
    stats, n_train, n_val, bad = _stats(cfg, facts)
    lengths = length_report(stats, cfg.data.cutoff_len, cfg.data.overlength)
    sched = schedule(stats, cfg, cfg.plan.world_size, split=(n_train, n_val))
    seq = min(cfg.data.cutoff_len, max(stats.total))
    st = setup_from_config(cfg, seq=seq, gpu=gpu)
    st = replace(st, supervised=lengths.supervised.p99)
    budget = gpu.mem_gib * GIB if gpu else None
    memory = {}
    for m in by_footprint():
        est = estimate(facts, m, st)
        row = est.to_json()
        if budget is not None:
            row["fits"] = est.total <= budget
            if not row["fits"]:
                fix = cheapest_fix(facts, m, st, budget, min_seq=lengths.supervised.p99 + 64, bf16=gpu.bf16)
                row["fix"] = {"change": fix[0], "total": fix[1].total} if fix else None
        memory[m] = row
    method = cfg.method.name
    rec_cut, _ = recommend_cutoff(stats, facts.context)
    largest, needs = _largest_batch(facts, method, replace(st, seq=rec_cut), budget) if budget else (None, [])
    throughput, source = None, None
    if measure:
        t = measure_training(cfg)
        throughput, source = t.padded_tokens_per_second, f"measured: {t.device}, {t.steps} steps"
        measured = t.to_json()
    else:
        measured = None
        if cfg.plan.tokens_per_second:
            throughput, source = cfg.plan.tokens_per_second, "plan.tokens_per_second"
        elif gpu is not None:
            throughput = stated_tokens_per_second(facts, method, gpu, seq, cfg.train.gradient_checkpointing,
                                                  cfg.plan.mfu)
            source = f"{gpu.name} {gpu.tflops:g} TFLOPS × MFU {cfg.plan.mfu:g} (FLOPs estimate)" if throughput else None
    epoch_s = sched.padded_tokens_per_epoch / throughput if throughput else None
    time = {"tokens_per_second": throughput, "source": source, "measured": measured,
            "seconds_per_epoch": epoch_s,
            "seconds_total": epoch_s * sched.epochs if epoch_s else None}
    findings = preflight(cfg, stats, facts, split=(n_train, n_val))
    from glmtune.plan.export_memory import export_estimate, other_estimates

    export = export_estimate(facts, method, cfg.export, st)
    export["other"] = other_estimates(facts, cfg.export)
    return {
        "model": facts.to_json(), "gpu": gpu.__dict__ if gpu else None, "method": method,
        "bad_records": bad, "data": lengths.to_json(), "lengths": list(stats.total),
        "schedule": sched.to_json(), "memory": memory, "memory_seq": seq, "export": export, "time": time,
        "advice": [a.to_json() for a in advise(cfg, stats, facts, sched, largest)] + [
            {"key": k.split("=")[0], "value": k.split("=")[1].split(" ")[0],
             "current": "", "reason": f"needed for micro-batch {largest} to fit {gpu.name}"} for k in needs],
        "findings": [f.to_json() for f in findings],
    }


def write_histogram(plan: dict, path: Path, recommended: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = plan["data"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(plan["lengths"], bins=40, color="#4c72b0")
    right = max(d["total"]["max"], recommended or 0) * 1.25
    if d["cutoff"] <= right:
        ax.axvline(d["cutoff"], color="red", label=f"cutoff_len {d['cutoff']} ({d['over_cutoff']} over)")
    else:  # far right of the data: keep the bars readable, say where the cutoff is
        ax.set_xlim(0, right)
        ax.axvline(right, color="red", linestyle=":", label=f"cutoff_len {d['cutoff']} → (off scale, 0 over)")
    if recommended:
        ax.axvline(recommended, color="green", linestyle="--", label=f"recommended {recommended}")
    approx = " (estimated)" if d["approximate"] else ""
    ax.set_xlabel(f"tokens per sample with the chat template{approx}")
    ax.set_ylabel("samples")
    ax.set_title(f"{plan['model']['name']}: p50 {d['total']['p50']}, p99 {d['total']['p99']}, max {d['total']['max']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_UNIT = [GIB, "GiB"]


def _gib(x) -> str:
    return "" if x is None else f"{x / _UNIT[0]:.1f}"


def _dur(s) -> str:
    if s is None:
        return "n/a (give --gpu, --measure or plan.tokens_per_second)"
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def print_plan(plan: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    c = console or Console(width=None if Console().is_terminal else 150)
    small = max(r["total"] for r in plan["memory"].values()) < GIB
    _UNIT[:] = [2 ** 20, "MiB"] if small else [GIB, "GiB"]
    m, d, s = plan["model"], plan["data"], plan["schedule"]
    size = f"{m['params'] / 1e9:.2f} B" if m["params"] >= 1e8 else f"{m['params'] / 1e6:.2f} M"
    c.print(f"[bold]{m['name']}[/] ({size} params, {m['layers']} layers, hidden {m['hidden']}, "
            f"vocab {m['vocab']}, context {m['context']}; facts from {m['source']}) — method [bold]{plan['method']}[/]")
    if d["approximate"]:
        c.print(f"[yellow]{d['note']}[/]")
    t = Table(title=f"data: {d['samples']} samples (train+validation), turns p50 {d['turns']['p50']} max "
                    f"{d['turns']['max']}, template overhead {d['template_overhead']} tokens")
    for col in ("tokens", "p50", "p90", "p99", "max", "mean"):
        t.add_column(col, justify="right")
    for k in ("total", "prompt", "supervised"):
        t.add_row(k, *(str(d[k][q]) for q in ("p50", "p90", "p99", "max", "mean")))
    c.print(t)
    c.print(f"cutoff_len {d['cutoff']} ({d['overlength']}): {d['over_cutoff']} of {d['samples']} samples "
            f"({d['over_share']:.0%}) over; {d['prompt_tokens_cut']} prompt and {d['supervised_lost']} of "
            f"{d['supervised_total']} supervised tokens lost")
    t = Table(title="schedule")
    for col in ("train", "val", "eff. batch", "steps/epoch", "epochs", "total steps", "warm-up", "tokens/step",
                "tokens/epoch"):
        t.add_column(col, justify="right")
    t.add_row(str(s["train"]), str(s["val"]), f"{s['batch']}×{s['grad_accum']}×{s['world_size']}="
              f"{s['effective_batch']}", str(s["steps_per_epoch"]), f"{s['epochs']:g}", str(s["total_steps"]),
              f"{s['warmup_steps']} ({s['warmup_share']:.0%})", f"{s['tokens_per_step']:.0f}",
              f"{s['tokens_per_epoch']} ({s['padded_tokens_per_epoch']} padded)")
    c.print(t)
    gpu = plan["gpu"]
    t = Table(title=f"memory {_UNIT[1]} at seq {plan['memory_seq']}, batch {s['batch']}"
                    + (f" — {gpu['name']} ({gpu['mem_gib']:g} GiB)" if gpu else " — no GPU given (--gpu)"))
    cols = ("method", "trainable", "weights", "master", "grads", "optim", "activ.", "logits", "overhead", "total")
    for col in cols:
        t.add_column(col, justify="right")
    if gpu:
        t.add_column("verdict")
    for name, r in plan["memory"].items():
        row = [name + (" *" if name == plan["method"] else ""), f"{r['trainable_params'] / 1e6:.2f}M",
               *(_gib(r[k]) for k in ("weights", "master_copy", "gradients", "optimizer", "activations", "logits",
                                      "overhead", "total"))]
        if gpu:
            fix = r.get("fix")
            row.append("[green]fits[/]" if r["fits"] else
                       f"[red]does not fit[/]; {fix['change']} → {_gib(fix['total'])}" if fix else "[red]does not fit[/]")
        t.add_row(*row)
    c.print(t)
    ex = plan.get("export")
    if ex and ex["peak_bytes"] is None:
        c.print(f"export: {ex['note']}")
    elif ex:
        c.print(f"export ({plan['method']}, host RAM, streamed): peak {_gib(ex['peak_bytes'])} {_UNIT[1]} — merge "
                f"{_gib(ex['merge_bytes'])} ({ex['shard_size']} shards)"
                + (f", verify {_gib(ex['verify_bytes'])} (one layer)" if ex["verify_bytes"] else "")
                + f", each on top of the interpreter (up to {_gib(ex['interpreter_bytes'])}); the model is "
                f"{_gib(ex['whole_model_fp32_bytes'])} in float32")
    other = (ex or {}).get("other") or {}
    if other:  # after the merge when started from a run; each its own process
        c.print(f"other exports (host RAM peak, {_UNIT[1]}): " + ", ".join(_other_line(k, o) for k, o in other.items()))
    tm = plan["time"]
    tps = f"{tm['tokens_per_second']:.0f} tokens/s ({tm['source']})" if tm["tokens_per_second"] else "unknown"
    c.print(f"time: {tps}; epoch {_dur(tm['seconds_per_epoch'])}, run {_dur(tm['seconds_total'])}")
    t = Table(title="recommendations")
    for col in ("key", "now", "recommended", "why"):
        t.add_column(col)
    for a in plan["advice"]:
        t.add_row(a["key"], str(a["current"]), str(a["value"]), a["reason"])
    c.print(t)
    colour = {"fatal": "red", "warn": "yellow", "info": "cyan"}
    for f in plan["findings"]:
        c.print(f"[{colour[f['level']]}]{f['level']}[/] {f['code']}: {f['message']}")


def _other_line(key: str, est: dict) -> str:
    """'GGUF f16 18.1 (what holds it)': the phase that sets the peak of one of export_memory.other_estimates."""
    label = {"gguf_f16": "GGUF f16", "gguf_q4_k_m": "GGUF q4_k_m", "bnb4": "bnb4", "convert": "convert"}.get(key, key)
    why = ""
    if key.startswith("gguf"):
        phase = max(("convert_bytes", "quantize_bytes", "verify_bytes"), key=lambda k: est.get(k) or 0)
        why = {"convert_bytes": "converter: one tensor at a time",
               "quantize_bytes": "llama.cpp's quantizer maps the lossless GGUF",
               "verify_bytes": f"llama.cpp maps the {_gib(max(est['file_bytes'].values()))} file it checks"}[phase]
    elif key.startswith("bnb"):
        why = ("its check, one layer at a time" if (est.get("verify_bytes") or 0) >= est["quantize_bytes"]
               else "one shard + one tensor")
    elif key == "convert":
        why = f"one {est['shard_size']} shard + one tensor"
    return f"{label} {_gib(est['peak_bytes'])} ({why})"


def write_plan(plan: dict, out: Path) -> tuple[Path, Path]:
    from glmtune.utils.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    rec = next((a["value"] for a in plan["advice"] if a["key"] == "data.cutoff_len"), None)
    return atomic_write_json(out / "plan.json", plan), write_histogram(plan, out / "lengths.png", rec)
