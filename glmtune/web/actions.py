"""What each button of `glmtune web` does, without gradio (so it is tested directly).

Every action runs the CLI's code: data check calls `read_file` as `glmtune data check` does, token stats the
functions of `glmtune data stats`, the train form becomes `section.key=value` overrides validated by
`load_config` (the config's own messages), and long work (train, export) runs the CLI verb itself as a job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

from glmtune.run.folder import METRICS, SUMMARY, is_finished
from glmtune.web.jobs import Job
from glmtune.web.workspace import WebError, Workspace, check_name

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # jobs run this very glmtune, wherever it lives
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
NO_FIELD_SPEC = "none"  # the Evaluate tab's field-spec choice for text metrics only


def _methods() -> list[str]:
    from glmtune.methods import REGISTRY, default_name

    return [default_name(), *(n for n in REGISTRY if n != default_name())]


def methods_with(option: str) -> tuple[str, ...]:
    """Registered methods whose config has `option` (the form shows its field only for them)."""
    from glmtune.methods import REGISTRY

    return tuple(n for n, m in REGISTRY.items() if option in m.config_cls.model_fields)


METHODS = _methods()

# The train form's fields: (form key, dotted config path, methods it belongs to or None for all).
FORM_FIELDS = [
    ("model_path", "model.path", None),
    ("data_train", "data.train", None),
    ("cutoff_len", "data.cutoff_len", None),
    ("val_size", "data.val_size", None),
    ("rank", "method.rank", methods_with("rank")),
    ("alpha", "method.alpha", methods_with("alpha")),
    ("dropout", "method.dropout", methods_with("dropout")),
    ("bits", "method.bits", methods_with("bits")),
    ("pre_seq_len", "method.pre_seq_len", methods_with("pre_seq_len")),
    ("trainable_layers", "method.trainable_layers", methods_with("trainable_layers")),
    ("epochs", "train.epochs", None),
    ("max_steps", "train.max_steps", None),
    ("batch_size", "train.batch_size", None),
    ("grad_accum", "train.grad_accum", None),
    ("lr", "train.lr", None),
    ("save_steps", "train.save_steps", None),
]


def glmtune_env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": PACKAGE_PARENT + (os.pathsep + path if path else "")}


def cli_line(argv: list[str]) -> str:
    """The command as a user types it: `glmtune VERB ...` (the job runs `python -m glmtune VERB ...`)."""
    return "glmtune " + " ".join(shlex.quote(a) for a in argv)


# -- Data -----------------------------------------------------------------------------------------------------
def check_data(ws: Workspace, path: str, fmt: str = "auto") -> tuple[list[str], str]:
    """`glmtune data check FILE`: every problem as `file:line: field: message`, and the one-line summary."""
    from glmtune.data.formats import read_file

    p = ws.resolve(path)
    shown = ws.rel(p)
    convs, issues = read_file(p, fmt)
    lines = [str(i).replace(str(p), shown, 1) for i in issues]
    return lines, f"{shown}: {len(convs)} good record(s), {len(issues)} problem(s)"


def _renderer(model_path: str, cfg):
    from glmtune.data.render import Renderer
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, resolve_path, stop_token_ids

    mpath = resolve_path(model_path)
    tok = load_tokenizer(mpath, cfg.model.trust_remote_code, cfg.model.chat_template)
    return mpath, tok, Renderer(tok, stop_token_ids(tok, family_of(model_type_of(mpath))), cfg.data.loss_on)


def data_stats(ws: Workspace, path: str, model_path: str = "tiny:glm4", cutoff_len: int = 2048) -> dict:
    """`glmtune data stats`: token lengths with the model's real chat template, and what the cutoff would cut.

    Returns the CLI's table rows (`rows`), its cutoff line (`line`), every sample's rendered length (`lengths`),
    the length histogram (`hist`: bins and counts, numpy's) and the truncation preview (`cut`)."""
    import numpy as np

    from glmtune.config.load import load_config
    from glmtune.data.dataset import load_conversations
    from glmtune.data.stats import compute_stats, summarize, truncation_preview

    p = ws.resolve(path)
    cfg = load_config(None, [f"data.train={p}", f"model.path={model_path}", f"data.cutoff_len={int(cutoff_len)}"])
    mpath, _, renderer = _renderer(cfg.model.path, cfg)
    cfg.data.on_bad_record = "skip"  # the check above lists them; stats measure the good ones
    convs, issues = load_conversations(cfg.data, "train")
    st = compute_stats(convs, renderer)
    rows = []
    for name, vals in (("total", st.total), ("prompt", st.prompt), ("supervised", st.supervised)):
        s = summarize(vals)
        rows.append([name, *(s[k] for k in ("p50", "p90", "p99", "max", "mean"))])
    tp = truncation_preview(st, cfg.data.cutoff_len)
    line = (f"{st.n} samples with {mpath.name}'s chat template ({len(issues)} bad skipped); cutoff_len "
            f"{tp['cutoff_len']}: {tp['samples_over']} samples over ({tp['share_over']:.1%}), holding "
            f"{tp['supervised_tokens_in_over']} supervised tokens; template overhead {st.template_overhead} tokens")
    counts, edges = np.histogram(st.total, bins=min(30, max(1, len(set(st.total))))) if st.n else ([], [0])
    hist = [[int(edges[i]), int(edges[i + 1]), int(c), int(edges[i + 1]) > tp["cutoff_len"]]
            for i, c in enumerate(counts)]
    return {"rows": rows, "line": line, "lengths": list(st.total), "hist": hist, "cut": tp, "model": mpath.name,
            "bad": len(issues), "policy": cfg.data.overlength}


def histogram_figure(stats: dict):
    """The token-length histogram with the cutoff drawn in (matplotlib, rendered on the server): an RGB array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cut, lengths = stats["cut"], stats["lengths"]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    if lengths:
        edges = [h[0] for h in stats["hist"]] + [stats["hist"][-1][1]]
        ax.hist(lengths, bins=edges, color="#4c72b0")
        right = max(lengths) * 1.25
        if cut["cutoff_len"] <= right:
            ax.axvline(cut["cutoff_len"], color="red",
                       label=f"cutoff_len {cut['cutoff_len']}: {cut['samples_over']} over "
                             f"(data.overlength={stats['policy']})")
        else:
            ax.axvline(right, color="red", linestyle=":", label=f"cutoff_len {cut['cutoff_len']} → (off scale, 0 over)")
        ax.legend()
    ax.set_xlabel(f"tokens per sample with {stats['model']}'s chat template")
    ax.set_ylabel("samples")
    ax.set_title(f"{len(lengths)} samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def render_data(ws: Workspace, path: str, model_path: str = "tiny:glm4", cutoff_len: int = 2048,
                limit: int = 3) -> tuple[str, str, list[str]]:
    """`glmtune data render FILE --model M --limit N`: each sample's text and ids as training sees them, supervised
    tokens highlighted. Returns (HTML, plain text, problems), drawn by the CLI's own printer."""
    import io

    from rich.console import Console

    from glmtune.config.load import load_config
    from glmtune.data.cli import _print_sample
    from glmtune.data.dataset import render_sample
    from glmtune.data.formats import read_file

    p = ws.resolve(path)
    cfg = load_config(None, [f"model.path={model_path}", f"data.cutoff_len={int(cutoff_len)}"])
    mpath, tok, renderer = _renderer(cfg.model.path, cfg)
    convs, issues = read_file(p, cfg.data.format, cfg.data.columns)
    problems = [str(i).replace(str(p), ws.rel(p), 1) for i in issues]
    convs = convs[: int(limit)] if limit else convs
    console = Console(record=True, width=120, file=io.StringIO(), highlight=False, force_terminal=True)
    console.print(f"{mpath.name}: {len(convs)} sample(s); [reverse] supervised [/reverse] tokens are the ones the loss "
                  f"is computed on, [bold magenta]special[/bold magenta] tokens are real special tokens (text typed "
                  f"in a message never is) (data.loss_on={cfg.data.loss_on}, cutoff_len={cfg.data.cutoff_len})")
    for conv in convs:
        ex, skip = render_sample(conv, renderer, cfg.data)
        if ex is None:
            problems.append(f"{ws.rel(p)}:{conv.source.line}: not trained on: {skip.reason}")
            continue
        _print_sample(console, tok, conv, ex, skip)
    html = console.export_html(inline_styles=True, clear=False,
                               code_format="<pre style=\"white-space: pre-wrap; font-size: 12px\">{code}</pre>")
    return html.replace(str(p), ws.rel(p)), console.export_text().replace(str(p), ws.rel(p)), problems


# -- Train ----------------------------------------------------------------------------------------------------
def presets() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS_DIR)) for p in CONFIGS_DIR.rglob("*.yaml") if "deepspeed" not in p.parts)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _get(cfg, dotted: str):
    node = cfg
    for k in dotted.split("."):
        node = getattr(node, k, None)
    return node


def _scalar(v) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)  # JSON scalars and lists are YAML too: the CLI reads them back as the same value


def preset_form(preset: str) -> tuple[dict, str]:
    """A bundled config -> the form's values and the rest of its non-default settings as override lines."""
    from glmtune.config.load import load_config

    cfg = load_config(CONFIGS_DIR / preset) if preset else load_config()
    values = {key: _get(cfg, dotted) for key, dotted, _ in FORM_FIELDS}
    values["method"] = cfg.method.name
    default, mine = _flat(load_config().model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    covered = {d for _, d, _ in FORM_FIELDS} | {"train.output_dir"}
    extras = [f"{k}={_scalar(v)}" for k, v in mine.items()
              if not k.startswith("method.") and k not in covered and default.get(k, object()) != v]
    return values, "\n".join(extras)


def train_overrides(ws: Workspace, form: dict) -> tuple[list[str], Path]:
    """The form -> `section.key=value` overrides (defaults omitted), the run folder inside the workspace."""
    from glmtune.config.load import load_config

    name = check_name(form.get("run_name", ""), "run name")
    run_dir = ws.runs_dir / name
    from glmtune.methods import default_name

    method = form.get("method") or default_name()
    if method not in METHODS:
        raise WebError(f"method {method!r}: one of {METHODS}")
    default = load_config(None, [f"method.name={method}"])
    data = form.get("data_train") or "demo"
    overrides = [f"method.name={method}"] if method != default_name() else []
    for key, dotted, methods in FORM_FIELDS:
        if methods and method not in methods:
            continue
        value = form.get(key)
        if key == "data_train":
            value = data if data == "demo" else str(ws.resolve(data))
        if key == "max_steps" and not value:
            value = None  # 0 or empty: train for train.epochs
        if value is None or value == "":
            if _get(default, dotted) is not None and key != "max_steps":
                continue
        if isinstance(value, float) and value.is_integer() and isinstance(_get(default, dotted), int):
            value = int(value)
        if value == _get(default, dotted):
            continue
        overrides.append(f"{dotted}={_scalar(value)}")
    overrides.append(f"train.output_dir={run_dir}")
    for line in (form.get("extra") or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            overrides.append(line)
    return overrides, run_dir


def build_train(ws: Workspace, form: dict):
    """Validate the form with the config's own loader: (RunConfig, overrides, run folder, YAML, CLI line)."""
    from glmtune.config.load import dump_config, load_config

    overrides, run_dir = train_overrides(ws, form)
    cfg = load_config(None, overrides)  # ConfigError: the same message `glmtune train` prints
    if Path(cfg.train.output_dir).resolve() != run_dir.resolve():
        raise WebError("train.output_dir is set by the run name: remove it from the extra settings")
    for key in ("train", "validation", "test"):  # data files come from the workspace, however they were typed
        value = getattr(cfg.data, key)
        if value and value != "demo":
            ws.resolve(value)
    argv = ["train", *overrides]
    return cfg, overrides, run_dir, dump_config(cfg), cli_line(argv)


def start_train(ws: Workspace, form: dict) -> Job:
    cfg, overrides, run_dir, yaml_text, _ = build_train(ws, form)
    if run_dir.exists():
        raise WebError(f"run folder {ws.rel(run_dir)} exists: pick another run name, or select its job and Resume")
    (ws.root / "configs").mkdir(exist_ok=True)
    (ws.root / "configs" / f"{run_dir.name}.yaml").write_text(yaml_text, encoding="utf-8")
    return ws.jobs.start("train", [sys.executable, "-m", "glmtune", "train", *overrides], run_dir=run_dir,
                         name=run_dir.name, env=glmtune_env())


# The trainer's progress bar (no description, unlike "Loading weights: ..."): "  50%|███  | 3/6 [00:06<00:05, ...".
_TQDM = re.compile(r"^\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")


def job_progress(job: Job) -> dict:
    """Loss rows from the run's metrics.jsonl; step/total and ETA from the trainer's progress bar in the log."""
    from glmtune.train.callbacks import read_metrics

    rows = []
    if job.run_dir:
        try:
            metrics = read_metrics(Path(job.run_dir) / METRICS)
        except ValueError:  # a line being appended right now
            metrics = []
        for r in metrics:
            if "loss" in r:
                rows.append({"step": r["step"], "loss": r["loss"], "series": "train"})
            if "eval_loss" in r:
                rows.append({"step": r["step"], "loss": r["eval_loss"], "series": "eval"})
    out = {"rows": rows, "step": None, "total": None, "elapsed": None, "eta": None}
    if job.kind != "train":
        return out
    # The first bar in the log is the training bar (evaluation bars come later, with their own totals).
    if not Path(job.log_path).exists():
        return out
    with open(job.log_path, "rb") as f:
        head = f.read(200_000).decode("utf-8", "replace")
    first = next((m.groups() for seg in re.split(r"[\r\n]", head) if (m := _TQDM.match(seg))), None)
    if first:
        bars = [m.groups() for seg in re.split(r"[\r\n]", job.log_tail(6000))
                if (m := _TQDM.match(seg)) and m.group(2) == first[1]]
        step, total, elapsed, eta = bars[-1] if bars else first
        done = max([int(step)] + [r["step"] for r in rows])
        out.update(step=done, total=int(total), elapsed=elapsed, eta=eta)
    summary = Path(job.run_dir or "/nonexistent") / SUMMARY
    if summary.exists():
        s = json.loads(summary.read_text())
        out["summary"] = s
        out.update(step=s.get("steps"), total=s.get("steps"), eta="0:00")
    return out


def progress_text(job: Job, prog: dict) -> str:
    what = f"job {job.id} · {job.name} · **{job.status}**"
    if job.exit_code not in (None, 0) or job.note:
        what += f" ({job.note or f'exit code {job.exit_code}'})"
    if prog.get("step") is not None:
        what += f" · step {prog['step']}/{prog['total']}"
        if job.status == "running" and prog.get("eta"):
            what += f" · elapsed {prog['elapsed']}, ETA {prog['eta']}"
    s = prog.get("summary")
    if s and s.get("loss_first") is not None:
        what += f" · loss {s['loss_first']:.4f} → {s['loss_last']:.4f} · {s.get('wall_s')} s"
    return what


# -- Export ---------------------------------------------------------------------------------------------------
def start_export(ws: Workspace, run: str, size: str, dtype: str, device: str, out_name: str,
                 verify: bool = True) -> tuple[Job, str]:
    run_dir = ws.resolve(run)
    if not is_finished(run_dir):
        raise WebError(f"{ws.rel(run_dir)} is not a finished run (no method.json)")
    out = ws.exports_dir / check_name(out_name, "export name")
    if out.exists():
        raise WebError(f"export folder {ws.rel(out)} exists: pick another name")
    argv = ["export", "--run", str(run_dir), "--out", str(out)]
    if size:
        argv += ["--size", size.strip()]
    if dtype:
        argv += ["--dtype", dtype]
    if device:
        argv += ["--device", device.strip()]
    if not verify:
        argv.append("--no-verify")
    job = ws.jobs.start("export", [sys.executable, "-m", "glmtune", *argv], run_dir=out, name=out.name,
                        env=glmtune_env())
    return job, cli_line(argv)


def export_report(ws: Workspace, job: Job) -> str:
    out = Path(job.run_dir)
    if job.status == "running":
        return f"export job {job.id} running → {ws.rel(out)}"
    if job.status != "finished":
        return f"export job {job.id} {job.status} ({job.note or job.exit_code}):\n{job.log_tail(1500)}"
    lines = [f"exported to {ws.rel(out)}"]
    shards = sorted(out.glob("*.safetensors"))
    lines += [f"  {p.name}  {p.stat().st_size / 2**20:.2f} MiB" for p in shards]
    rep = out / "export.json"
    if rep.exists():
        r = json.loads(rep.read_text())
        lines.append("export: " + ", ".join(f"{k}={r[k]}" for k in ("mode", "dtype", "device", "max_shard_bytes",
                                                                    "shards", "total_bytes", "seconds") if k in r))
    v = out / "verify.json"
    if v.exists():
        r = json.loads(v.read_text())
        lines.append(f"verify: {'passed' if r.get('passed') else 'FAILED'} · max |Δlogit| {r.get('max_abs_diff')}"
                     f" (tolerance {r.get('tolerance')})")
    else:
        lines.append("verify: skipped")
    return "\n".join(lines)


# -- Plan -----------------------------------------------------------------------------------------------------
def plan_form(ws: Workspace, form: dict, gpu: str | None) -> tuple[str, Path, list[list], str]:
    """`glmtune plan` on the train form's config: the printed report, the length histogram, the advice rows,
    and the equivalent command. Files go to <workspace>/plans/<run name>/ (the run folder stays unborn)."""
    import io

    from rich.console import Console

    from glmtune.plan.facts import CloudOnlyModel
    from glmtune.plan.memory import parse_gpu
    from glmtune.plan.report import build_plan, print_plan, write_plan

    cfg, overrides, run_dir, _, _ = build_train(ws, form)
    try:
        plan = build_plan(cfg, gpu=parse_gpu(gpu or None) if gpu else None)
    except (CloudOnlyModel, ValueError, FileNotFoundError) as err:
        raise WebError(str(err)) from None
    out = ws.root / "plans" / run_dir.name
    _, png = write_plan(plan, out)
    console = Console(record=True, width=150, file=io.StringIO())
    print_plan(plan, console)
    advice = [[a["key"], str(a["current"]), str(a["value"]), a["reason"]] for a in plan["advice"]]
    argv = ["plan", *overrides, *(["--gpu", gpu] if gpu else []), "--out", str(out)]
    return console.export_text(), png, advice, cli_line(argv)


def apply_advice(form: dict, choice: str) -> dict:
    """`section.key=value` from the plan into the form: its field if the form has one, else More settings."""
    if not choice or "=" not in choice:
        raise WebError("pick a recommendation first")
    key, value = choice.split("=", 1)
    form = dict(form)
    by_path = {dotted: k for k, dotted, _ in FORM_FIELDS}
    if key in by_path:
        import yaml

        form[by_path[key]] = yaml.safe_load(value)
        return form
    lines = [ln for ln in (form.get("extra") or "").splitlines() if ln.split("=", 1)[0].strip() != key]
    form["extra"] = "\n".join(lines + [choice])
    return form


# -- Evaluate -------------------------------------------------------------------------------------------------
def start_eval(ws: Workspace, run: str, test: str, out_name: str, limit: int | None = None,
               max_new_tokens: int | None = None, base_too: bool = False, forgetting: bool = False,
               field_spec: str | None = None, extra: str = "") -> tuple[Job, str]:
    """`glmtune eval --run RUN --test FILE --out evals/NAME ...` (`eval_argv`) as a job (generation takes a while)."""
    argv = eval_argv(ws, run, test, out_name, limit, max_new_tokens, base_too, forgetting, field_spec, extra)
    out = Path(argv[argv.index("--out") + 1])
    job = ws.jobs.start("eval", [sys.executable, "-m", "glmtune", *argv], run_dir=out, name=out.name,
                        env=glmtune_env())
    return job, cli_line(argv)


def eval_argv(ws: Workspace, run: str, test: str, out_name: str, limit: int | None = None,
              max_new_tokens: int | None = None, base_too: bool = False, forgetting: bool = False,
              field_spec: str | None = None, extra: str = "") -> list[str]:
    """The Evaluate form as `glmtune eval` arguments, every setting checked before a job would start.

    `field_spec`: a structured-answer spec a task registers (`field_spec_choices`; empty: the config's default,
    the default task's spec), "none" (text metrics only) or a YAML spec file in the workspace; `extra`: more
    `eval.key=value` lines, checked by the config's own loader."""
    from glmtune.config.load import load_config
    from glmtune.registry import default_field_spec, field_spec_names

    run_dir = ws.resolve(run)
    if not is_finished(run_dir):
        raise WebError(f"{ws.rel(run_dir)} is not a finished run (no method.json)")
    test_path = ws.resolve(test)
    out = ws.root / "evals" / check_name(out_name, "evaluation name")
    argv = ["eval", "--run", str(run_dir), "--test", str(test_path), "--out", str(out)]
    if limit:
        argv += ["--limit", str(int(limit))]
    if base_too:
        argv.append("--base-too")
    if forgetting:
        argv.append("--forgetting")
    if max_new_tokens:
        argv.append(f"eval.max_new_tokens={int(max_new_tokens)}")
    spec = (field_spec or "").strip() or default_field_spec() or NO_FIELD_SPEC
    builtin = spec in field_spec_names()
    if spec == NO_FIELD_SPEC:
        argv.append("eval.metrics=[text]")
    elif builtin and spec != default_field_spec():
        argv.append(f"eval.field_spec={spec}")
    elif not builtin:
        argv.append(f"eval.field_spec={ws.resolve(spec)}")
    for line in (extra or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if not line.startswith("eval."):
                raise WebError(f"{line!r}: only eval.key=value settings here")
            argv.append(line)
    load_config(None, [a for a in argv if a.startswith("eval.")])  # ConfigError: the message `glmtune eval` prints
    if spec != NO_FIELD_SPEC and not builtin:
        from glmtune.evaluate.fields import FieldSpec

        import yaml

        try:
            FieldSpec.load(str(ws.resolve(spec)))
        except (ValueError, KeyError, TypeError, OSError, yaml.YAMLError) as err:
            raise WebError(f"{spec}: not a field spec: {err}") from None
    return argv


def field_spec_choices(ws: Workspace) -> list[str]:
    """The Evaluate tab's field-spec choices: the specs registered tasks provide, "none", the workspace's YAML files."""
    from glmtune.registry import field_spec_names

    return [*field_spec_names(), NO_FIELD_SPEC, *ws.data_files(suffixes=(".yaml", ".yml"))]


def eval_report(ws: Workspace, job: Job) -> tuple[str, Path | None]:
    """The eval job's report.md (and confusion matrix PNG) once it is done; its state and log until then."""
    out = Path(job.run_dir)
    if job.status == "running":
        return f"evaluation job {job.id} running → `{ws.rel(out)}`", None
    report = out / "report.md"
    if job.status != "finished" or not report.exists():
        why = job.note or job.exit_code
        return f"evaluation job {job.id} {job.status} ({why}):\n```\n{job.log_tail(1500)}\n```", None
    png = next(iter(sorted(out.glob("confusion*.png"))), None)
    return report.read_text(encoding="utf-8"), png


def evals(ws: Workspace) -> list[str]:
    return sorted(p.parent.name for p in (ws.root / "evals").glob("*/report.json"))


def compare_evals(ws: Workspace, names: list[str]) -> tuple[str, Path, str]:
    """`glmtune eval compare evals/A evals/B ... --out evals/compare`: compare.md, compare.png, the command."""
    import io

    from rich.console import Console

    from glmtune.evaluate.compare import write_comparison

    if not names:
        raise WebError("pick at least one evaluation")
    refs = [ws.resolve(Path("evals") / check_name(n, "evaluation name") / "report.json") for n in names]
    out = ws.root / "evals" / "compare"
    paths = write_comparison([r.parent for r in refs], out, console=Console(file=io.StringIO(), width=150))
    argv = ["eval", "compare", *[str(r.parent) for r in refs], "--out", str(out)]
    return paths["compare.md"].read_text(encoding="utf-8"), paths["compare.png"], cli_line(argv)


def eval_view(ws: Workspace, name: str) -> dict:
    """An evaluation folder as tables, computed by the CLI's own code: the metric rows of `glmtune eval compare`
    (base vs tuned when `--base-too` wrote base/), each field's confusion matrix (rows = reference), and the
    forgetting check's line (`render_forgetting`) with the prompts the tuned model lost."""
    import io

    from rich.console import Console

    from glmtune.evaluate.compare import comparison_rows, load_report
    from glmtune.evaluate.forgetting import render_forgetting

    out = ws.resolve(Path("evals") / check_name(name, "evaluation name"))
    tuned = load_report(out)
    base = load_report(out / "base") if (out / "base" / "report.json").exists() else None
    reports = [base, tuned] if base else [tuned]
    rows, notes = comparison_rows(reports)
    header = ["metric", *(["base", tuned["label"], "Δ (tuned − base)"] if base else [tuned["label"]])]
    table = []
    for metric, _, vals in rows:
        cells = [round(v, 4) if isinstance(v, float) else v for v in vals]
        if base:
            d = vals[1] - vals[0] if all(isinstance(v, (int, float)) for v in vals) else None
            cells.append(None if d is None else round(d, 4))
        table.append([metric, *cells])
    confusions = {}
    for who, rep in (("tuned", tuned), ("base", base)):
        for field, m in ((rep or {}).get("fields") or {}).get("fields", {}).items():
            cm = m.get("confusion")
            if cm and cm["labels"]:
                confusions[f"{field} · {who}" if base else field] = {
                    "header": ["reference \\ predicted", *map(str, cm["labels"])],
                    "rows": [[str(lab), *row] for lab, row in zip(cm["labels"], cm["matrix"])]}
    forgetting, lost = None, []
    if "forgetting" in tuned:
        fg = tuned["forgetting"]
        forgetting = render_forgetting(fg, console=Console(file=io.StringIO(), width=200))
        lost = [[r["id"], r["prompt"], r["base"], r["tuned"]] for r in fg["items"] if r["id"] in fg["lost"]]
    png = out / "confusion.png"
    return {"header": header, "table": table, "notes": notes, "confusions": confusions, "forgetting": forgetting,
            "lost": lost, "png": png if png.exists() else None, "label": tuned["label"], "n": tuned["n"],
            "model": tuned.get("model")}
