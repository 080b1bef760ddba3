"""`glmtune web [--port 7860] [--host 127.0.0.1] [--workspace DIR] [--token T]`: the whole path in a browser.

Tabs: Data (upload or pick a file; `data check` problems as file:line; `data stats` with a token-length
histogram drawn with the model's real template and what the cutoff would cut; `data render`; below them each
registered task's own data panel, `Task.web_data_panel`, e.g. building a data set from the task's raw inputs), Plan (`glmtune plan` on the Train form), Train (a form over the typed
config, validated by the config's own loader; the YAML and the equivalent CLI command; Start / Stop / Resume;
the job list; live loss curve, progress with ETA, log tail), Export (run, shard size, dtype, device, output
folder; the verify result; one click to chat with it), Evaluate (`glmtune eval` as a job; metrics table, base
vs tuned, confusion matrices per field, forgetting delta; `eval compare` side by side) and Chat (a run, an
export, several adapters on one base, or an OpenAI-compatible endpoint; multi-turn, Clear, Stateless).
Training, export and evaluation run as jobs: separate `glmtune` processes recorded in `<workspace>/jobs.sqlite`,
so closing the page, reloading or restarting `glmtune web` loses nothing.

It binds 127.0.0.1. On any other address it refuses to start without an access token (--token or
GLMTUNE_WEB_TOKEN; the login page takes any user name and the token as password). Every path the page
reads or writes stays inside the workspace folder.

    glmtune web --workspace work            # then open http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
import time

HELP = "The whole path in a browser (gradio): data, plan, training jobs that outlive the page, export, eval, chat."
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV = "GLMTUNE_WEB_TOKEN"
CSS = ".mono textarea {font-family: ui-monospace, monospace; font-size: 12px; white-space: pre;}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="bind address; any other than 127.0.0.1 needs --token")
    parser.add_argument("--workspace", default="glmtune-work",
                        help="folder holding data/, runs/, exports/ and jobs.sqlite (created if missing)")
    parser.add_argument("--token", default=None, help=f"access token (or set {TOKEN_ENV}); required off 127.0.0.1")


def check_bind(host: str, token: str | None) -> None:
    from glmtune.web.workspace import WebError

    if host not in LOCAL_HOSTS and not token:
        raise WebError(f"refusing to listen on {host} without an access token: pass --token or set {TOKEN_ENV} "
                       "(or keep the default --host 127.0.0.1)")


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def loss_figure(job, rows: list[dict]):
    """Train and eval loss vs step, drawn like the run's plots/loss.png (matplotlib: rendered on the server)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    for series, style in (("train", "-"), ("eval", "o-")):
        pts = sorted({(r["step"], r["loss"]) for r in rows if r["series"] == series})
        if pts:
            ax.plot(*zip(*pts), style, label=f"{series} loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"job {job.id} · {job.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.canvas.draw()
    import numpy as np

    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def build_ui(ws):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    import pandas as pd

    from glmtune.errors import GlmtuneError
    from glmtune.registry import default_field_spec, tasks
    from glmtune.serve.webui import stream_reply
    from glmtune.web import actions
    from glmtune.web.chat import ChatModels, adapter_runs

    FORM_KEYS = [k for k, _, _ in actions.FORM_FIELDS]
    loss_empty = None
    models = ChatModels(ws)

    def err_text(err: Exception) -> str:
        return f"error: {err}"

    # -- Data ---------------------------------------------------------------------------------------------------
    def on_upload(file):
        if not file:
            return gr.update(), ""
        try:
            path = ws.save_upload(file)
        except GlmtuneError as err:
            return gr.update(), err_text(err)
        return gr.update(choices=ws.data_files(), value=ws.rel(path)), f"saved to {ws.rel(path)}"

    def on_check(path, fmt):
        try:
            lines, summary = actions.check_data(ws, path, fmt)
        except GlmtuneError as err:
            return "", err_text(err)
        return "\n".join(lines) or "no problems", summary

    def on_stats(path, model, cutoff):
        try:
            st = actions.data_stats(ws, path, model, int(cutoff or 2048))
        except (GlmtuneError, OSError, ValueError) as err:
            return None, err_text(err), None, None, ""
        line = actions.cli_line(["data", "stats", f"data.train={ws.resolve(path)}", f"model.path={model}",
                                 f"data.cutoff_len={int(cutoff or 2048)}"])
        return (pd.DataFrame(st["rows"], columns=["tokens", "p50", "p90", "p99", "max", "mean"]), st["line"],
                actions.histogram_figure(st),
                pd.DataFrame(st["hist"], columns=["from tokens", "to tokens", "samples", "past cutoff"]), line)

    def on_render(path, model, cutoff, limit):
        try:
            html, _, problems = actions.render_data(ws, path, model, int(cutoff or 2048), int(limit or 0))
        except (GlmtuneError, OSError, ValueError) as err:
            return "", err_text(err)
        return html, "\n".join(problems) or "every sample rendered"

    # -- Train --------------------------------------------------------------------------------------------------
    def form_dict(values) -> dict:
        names = ["run_name", "method", *FORM_KEYS, "extra"]
        return dict(zip(names, values))

    def method_visibility(method):
        # one row per group of method options: rank/alpha/dropout, bits, pre_seq_len, trainable_layers
        return tuple(gr.update(visible=method in actions.methods_with(option))
                     for option in ("rank", "bits", "pre_seq_len", "trainable_layers"))

    def on_preset(preset):
        values, extra = actions.preset_form(preset)
        name = os.path.splitext(preset.replace("/", "-"))[0] if preset else "run"
        return [f"{name}-{time.strftime('%H%M%S')}", values["method"],
                *[values[k] for k in FORM_KEYS], extra, *method_visibility(values["method"])]

    def on_validate(*values):
        try:
            cfg, _, run_dir, yaml_text, line = actions.build_train(ws, form_dict(values))
        except GlmtuneError as err:
            return err_text(err), "", "", None
        path = ws.root / "configs" / f"{run_dir.name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml_text, encoding="utf-8")
        return "config is valid", yaml_text, line, str(path)

    def on_start(*values):
        msg, yaml_text, line, path = on_validate(*values)
        if msg.startswith("error"):
            return msg, yaml_text, line, path, gr.update()
        try:
            job = actions.start_train(ws, form_dict(values))
        except GlmtuneError as err:
            return err_text(err), yaml_text, line, path, gr.update()
        return f"started job {job.id} ({job.name})", yaml_text, line, path, gr.update(
            choices=job_choices(), value=job.id)

    def job_choices():
        return [(f"{j.id} · {j.name} ({j.kind}, {j.status})", j.id) for j in ws.jobs.list()[:50]]

    def default_job():
        """What a fresh page shows: the newest training job, else the newest job."""
        jobs = ws.jobs.list()[:50]
        trains = [j.id for j in jobs if j.kind == "train"]
        return trains[0] if trains else jobs[0].id if jobs else None

    def jobs_frame():
        rows = []
        for j in ws.jobs.list()[:50]:
            prog = actions.job_progress(j) if j.kind == "train" else {}
            use = ws.jobs.usage(j)
            rows.append([j.id, j.name, j.kind, j.status,
                         f"{prog['step']}/{prog['total']}" if prog.get("step") is not None else "",
                         _fmt_time(j.started), _fmt_time(j.ended), "" if j.exit_code is None else j.exit_code,
                         f"{use['processes']} proc · {use['rss_mb']} MB · {use['cpu_s']} CPU s" if use else ""])
        return pd.DataFrame(rows, columns=["id", "name", "kind", "status", "step", "started", "ended", "exit", "uses"])

    def job_view(job_id):
        if job_id in (None, ""):
            return "no job selected", loss_empty, ""
        try:
            job = ws.jobs.get(int(job_id))
        except GlmtuneError as err:
            return err_text(err), loss_empty, ""
        prog = actions.job_progress(job)
        return actions.progress_text(job, prog), loss_figure(job, prog["rows"]), job.log_tail(3000)

    def on_tick(job_id):
        choices = job_choices()
        ids = [c[1] for c in choices]
        try:
            job_id = int(job_id)
        except (TypeError, ValueError):
            job_id = None
        if job_id not in ids:
            job_id = default_job()
        runs = ws.runs(finished_only=True)
        return (jobs_frame(), gr.update(choices=choices, value=job_id), *job_view(job_id), export_status(),
                gr.update(choices=runs), gr.update(choices=chat_sources()), eval_status()[0], gr.update(choices=runs),
                gr.update(choices=ws.data_files()), gr.update(choices=actions.evals(ws)))

    def on_stop(job_id):
        try:
            job = ws.jobs.stop(int(job_id))
            return f"stop sent to job {job.id}", gr.update()
        except (GlmtuneError, TypeError, ValueError) as err:
            return err_text(err), gr.update()

    def on_resume(job_id):
        try:
            job = ws.jobs.resume(int(job_id))
            return f"resumed as job {job.id} (train.resume=auto)", gr.update(choices=job_choices(), value=job.id)
        except (GlmtuneError, TypeError, ValueError) as err:
            return err_text(err), gr.update()

    # -- Plan ---------------------------------------------------------------------------------------------------
    def on_plan(gpu, *values):
        try:
            text, png, advice, line = actions.plan_form(ws, form_dict(values), gpu)
        except (GlmtuneError, OSError) as err:
            return err_text(err), None, None, gr.update(choices=[]), ""
        choices = [f"{k}={v}" for k, now, v, _ in advice if str(now) != str(v)]
        return (text, str(png), pd.DataFrame(advice, columns=["key", "now", "recommended", "why"]),
                gr.update(choices=choices, value=choices[0] if choices else None), line)

    def on_apply(choice, *values):
        try:
            form = actions.apply_advice(form_dict(values), choice)
        except GlmtuneError as err:
            return [gr.update()] * len(values) + [err_text(err)]
        names = ["run_name", "method", *FORM_KEYS, "extra"]
        return [form[n] for n in names] + [f"applied {choice} to the Train form"]

    # -- Export -------------------------------------------------------------------------------------------------
    def export_status():
        jobs = [j for j in ws.jobs.list() if j.kind == "export"]
        return actions.export_report(ws, jobs[0]) if jobs else "no export yet"

    def on_export(run, size, dtype, device, name, verify):
        try:
            job, line = actions.start_export(ws, run, size, dtype, device, name, verify)
        except GlmtuneError as err:
            return "", err_text(err)
        return line, f"export job {job.id} started"

    # -- Evaluate -----------------------------------------------------------------------------------------------
    def eval_status():
        jobs = [j for j in ws.jobs.list() if j.kind == "eval"]
        if not jobs:
            return "no evaluation yet", None
        text, png = actions.eval_report(ws, jobs[0])
        return text, str(png) if png else None

    def on_eval(run, test, name, limit, max_new, base_too, forgetting, spec, extra):
        try:
            job, line = actions.start_eval(ws, run, test, name, limit, max_new, base_too, forgetting, spec, extra)
        except GlmtuneError as err:
            return "", err_text(err)
        return line, f"evaluation job {job.id} started"

    def field_specs():
        return actions.field_spec_choices(ws)

    def on_view(name):
        empty = (None, "", gr.update(choices=[], value=None), None, "", None, None, {})
        try:
            v = actions.eval_view(ws, name)
        except (GlmtuneError, OSError, ValueError, KeyError) as err:
            return (None, err_text(err), *empty[2:])
        summary = f"`{v['model']}` · {v['n']} samples" + "".join(f"\n\n> {n}" for n in v["notes"])
        names = list(v["confusions"])
        first = names[0] if names else None
        return (pd.DataFrame(v["table"], columns=v["header"]), summary,
                gr.update(choices=names, value=first), confusion_frame(v["confusions"], first),
                v["forgetting"] or "no forgetting check in this evaluation (tick Forgetting check)",
                pd.DataFrame(v["lost"], columns=["id", "prompt", "base answer", "tuned answer"]) if v["lost"] else None,
                str(v["png"]) if v["png"] else None, v["confusions"])

    def confusion_frame(confusions, name):
        cm = (confusions or {}).get(name)
        return pd.DataFrame(cm["rows"], columns=cm["header"]) if cm else None

    def on_compare(names):
        try:
            md, png, line = actions.compare_evals(ws, names or [])
        except (GlmtuneError, OSError, ValueError, KeyError) as err:
            return err_text(err), None, ""
        return md.replace("![comparison](compare.png)", ""), str(png), line

    # -- Chat ---------------------------------------------------------------------------------------------------
    def chat_sources():
        return [f"run: {r}" for r in ws.runs(finished_only=True)] + [f"export: {e}" for e in ws.exports()]

    def to_chat():
        jobs = [j for j in ws.jobs.list() if j.kind == "export" and j.status == "finished"]
        if not jobs:
            return gr.update(), gr.update(), "no finished export yet"
        src = f"export: {ws.rel(jobs[0].run_dir)}"
        return gr.Tabs(selected="chat"), gr.update(choices=chat_sources(), value=src), ""

    def on_source(source):
        """A new source: forget the conversation; offer the runs whose adapters can join it."""
        choices = []
        if source and source.startswith("run: "):
            try:
                choices = adapter_runs(ws, source[5:])
            except (GlmtuneError, OSError, ValueError, KeyError):
                choices = []
        return [], [], gr.update(choices=choices, value=[]), gr.update(choices=[], value=None)

    def on_load(source, adapters, api_key):
        try:
            chat = models.get(source, adapters, api_key=api_key or None)
            if hasattr(chat, "models"):  # an endpoint: its model names (the served run and its adapters)
                names = chat.models()
                return f"endpoint {chat.url}: {len(names)} model(s)", gr.update(choices=names,
                                                                               value=names[0] if names else None)
        except (GlmtuneError, OSError, ValueError) as err:
            return err_text(err), gr.update()
        names = models.names()
        return f"loaded {', '.join(names)}", gr.update(choices=names, value=chat.name)

    def respond(source, adapters, pick, api_key, question, turns, stateless, system, max_tokens):
        if not (question or "").strip():
            yield "", turns, turns, gr.update()
            return
        try:
            engine = models.get(source, adapters, pick, endpoint_model=pick, api_key=api_key or None)
        except (GlmtuneError, OSError, ValueError) as err:
            yield question, turns, turns, err_text(err)
            return
        shown = turns
        try:
            for shown, kept in stream_reply(engine, turns, question, stateless=stateless, system=system,
                                            max_new_tokens=int(max_tokens)):
                yield "", shown, kept, f"answering with {engine.name}"
        except GlmtuneError as err:
            yield "", shown, turns, err_text(err)
            return
        yield "", shown, shown, f"answered with {engine.name}"

    # -- Layout -------------------------------------------------------------------------------------------------
    values0, extra0 = actions.preset_form("tiny/lora.yaml")
    with gr.Blocks(title="glmtune web") as ui:
        gr.Markdown(f"### glmtune · workspace `{ws.root}`")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Data", id="data", elem_id="tab_data"):
                with gr.Row():
                    upload = gr.File(label="Upload a .jsonl/.json (saved in the workspace's data/)",
                                     file_types=[".jsonl", ".json"], elem_id="data_upload", scale=2)
                    with gr.Column(scale=3):
                        data_file = gr.Dropdown(ws.data_files(), label="Data file (inside the workspace)",
                                                allow_custom_value=True, elem_id="data_file")
                        data_fmt = gr.Dropdown(["auto", "messages", "conversations", "sharegpt", "alpaca"],
                                               value="auto", label="Format", elem_id="data_format")
                        check_btn = gr.Button("Check (glmtune data check)", variant="primary", elem_id="data_check")
                data_summary = gr.Textbox(label="Result", elem_id="data_summary", interactive=False)
                data_problems = gr.Textbox(label="Problems (file:line: field: message)", lines=6,
                                           elem_id="data_problems", interactive=False)
                with gr.Row():
                    stats_model = gr.Textbox("tiny:glm4", label="Model (its chat template counts tokens)",
                                             elem_id="stats_model")
                    stats_cutoff = gr.Number(2048, label="cutoff_len", precision=0, elem_id="stats_cutoff")
                    stats_btn = gr.Button("Token stats (glmtune data stats)", elem_id="data_stats")
                    render_limit = gr.Number(2, label="Render the first N samples", precision=0,
                                             elem_id="render_limit")
                    render_btn = gr.Button("Render (glmtune data render)", elem_id="data_render")
                stats_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="stats_command")
                stats_line = gr.Textbox(label="What the cutoff would cut", elem_id="stats_line", interactive=False)
                with gr.Row():
                    stats_table = gr.Dataframe(label="Token lengths", elem_id="stats_table", interactive=False)
                    stats_hist = gr.Image(label="Token-length histogram (real chat template)", elem_id="stats_hist",
                                          interactive=False, height=280)
                with gr.Accordion("Histogram bins", open=False):
                    hist_table = gr.Dataframe(elem_id="hist_table", interactive=False)
                render_problems = gr.Textbox(label="Render: problems", elem_id="render_problems", interactive=False)
                render_html = gr.HTML(elem_id="render_html")
                upload.upload(on_upload, upload, [data_file, data_summary])
                check_btn.click(on_check, [data_file, data_fmt], [data_problems, data_summary])
                stats_btn.click(on_stats, [data_file, stats_model, stats_cutoff],
                                [stats_table, stats_line, stats_hist, hist_table, stats_cmd])
                render_btn.click(on_render, [data_file, stats_model, stats_cutoff, render_limit],
                                 [render_html, render_problems])

                for task in tasks().values():  # each registered task's own data panel (Task.web_data_panel)
                    if task.web_data_panel is not None:
                        task.web_data_panel(ws, data_file=data_file)

            with gr.Tab("Plan", id="plan", elem_id="tab_plan"):
                gr.Markdown("Plans the config of the **Train** tab's form (`glmtune plan`): token lengths vs cutoff, "
                            "steps, memory per method on the GPU, time, and recommendations.")
                with gr.Row():
                    from glmtune.plan.memory import GPUS

                    plan_gpu = gr.Dropdown(["", *GPUS], value="RTX4090-24GB", label="GPU", elem_id="plan_gpu")
                    plan_btn = gr.Button("Plan", variant="primary", elem_id="plan_run")
                plan_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="plan_command")
                plan_advice = gr.Dataframe(label="Recommendations", elem_id="plan_advice", interactive=False,
                                           wrap=True)
                with gr.Row():
                    advice_pick = gr.Dropdown([], label="Recommendation", elem_id="advice_pick", scale=3,
                                              allow_custom_value=True)
                    apply_btn = gr.Button("Apply to the Train form", elem_id="advice_apply", scale=1)
                plan_msg = gr.Textbox(label="Applied", elem_id="plan_msg", interactive=False)
                plan_hist = gr.Image(label="Rendered lengths (lengths.png)", elem_id="plan_hist", interactive=False,
                                     height=300)
                plan_text = gr.Textbox(label="Report", lines=30, max_lines=60, elem_id="plan_text",
                                       interactive=False, elem_classes=["mono"])

            with gr.Tab("Train", id="train", elem_id="tab_train"):
                with gr.Row():
                    preset = gr.Dropdown(actions.presets(), value="tiny/lora.yaml", label="Start from",
                                         elem_id="preset")
                    run_name = gr.Textbox(f"tiny-lora-{time.strftime('%H%M%S')}", label="Run name (runs/NAME)",
                                          elem_id="run_name")
                    method = gr.Dropdown(actions.METHODS, value=values0["method"], label="Method", elem_id="method")
                with gr.Row():
                    model_path = gr.Textbox(values0["model_path"], label="model.path", elem_id="model_path")
                    data_train = gr.Dropdown(["demo", *ws.data_files()], value=values0["data_train"],
                                             label="data.train", allow_custom_value=True, elem_id="data_train")
                    cutoff_len = gr.Number(values0["cutoff_len"], label="data.cutoff_len", precision=0,
                                           elem_id="cutoff_len")
                    val_size = gr.Number(values0["val_size"], label="data.val_size", elem_id="val_size")
                with gr.Row(visible=True) as lora_row:
                    rank = gr.Number(values0["rank"], label="method.rank", precision=0, elem_id="rank")
                    alpha = gr.Number(values0["alpha"], label="method.alpha", elem_id="alpha")
                    dropout = gr.Number(values0["dropout"], label="method.dropout", elem_id="dropout")
                with gr.Row(visible=False) as qlora_row:
                    bits = gr.Dropdown([4, 8], value=values0["bits"] or 4, label="method.bits", elem_id="bits")
                with gr.Row(visible=False) as ptuning_row:
                    pre_seq_len = gr.Number(values0["pre_seq_len"] or 128, label="method.pre_seq_len", precision=0,
                                            elem_id="pre_seq_len")
                with gr.Row(visible=False) as freeze_row:
                    trainable_layers = gr.Number(values0["trainable_layers"] or 2, label="method.trainable_layers",
                                                 precision=0, elem_id="trainable_layers")
                with gr.Row():
                    epochs = gr.Number(values0["epochs"], label="train.epochs", elem_id="epochs")
                    max_steps = gr.Number(values0["max_steps"], label="train.max_steps (0: use epochs)",
                                          precision=0, elem_id="max_steps")
                    batch_size = gr.Number(values0["batch_size"], label="train.batch_size", precision=0,
                                           elem_id="batch_size")
                    grad_accum = gr.Number(values0["grad_accum"], label="train.grad_accum", precision=0,
                                           elem_id="grad_accum")
                    lr = gr.Number(values0["lr"], label="train.lr", elem_id="lr")
                    save_steps = gr.Number(values0["save_steps"], label="train.save_steps", precision=0,
                                           elem_id="save_steps")
                extra = gr.Textbox(extra0, label="More settings: one section.key=value per line (any config key)",
                                   lines=3, elem_id="extra")
                with gr.Row():
                    validate_btn = gr.Button("Validate", elem_id="validate")
                    start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                train_msg = gr.Textbox(label="Status", elem_id="train_msg", interactive=False)
                with gr.Row():
                    command = gr.Code(label="Equivalent command", language="shell", elem_id="command")
                    yaml_file = gr.File(label="config YAML", elem_id="yaml_file")
                yaml_box = gr.Code(label="Resolved config (YAML)", language="yaml", elem_id="yaml", max_lines=18)
                gr.Markdown("#### Jobs (kept in the workspace's jobs.sqlite: reload or restart freely)")
                jobs_table = gr.Dataframe(label="Jobs", elem_id="jobs_table", interactive=False)
                with gr.Row():
                    job_pick = gr.Dropdown(job_choices(), value=default_job(), label="Job", elem_id="job_pick",
                                           allow_custom_value=True)
                    stop_btn = gr.Button("Stop", elem_id="stop")
                    resume_btn = gr.Button("Resume (train.resume=auto)", elem_id="resume")
                job_msg = gr.Textbox(label="Job action", elem_id="job_msg", interactive=False)
                progress = gr.Markdown(elem_id="progress")
                loss_plot = gr.Image(label="Loss (from the run's metrics.jsonl)", elem_id="loss_plot", format="png",
                                     interactive=False, height=320)
                log_tail = gr.Textbox(label="Log tail", lines=8, max_lines=12, elem_id="log_tail",
                                      interactive=False, autoscroll=True)

                form = [run_name, method, model_path, data_train, cutoff_len, val_size, rank, alpha, dropout, bits,
                        pre_seq_len, trainable_layers, epochs, max_steps, batch_size, grad_accum, lr, save_steps,
                        extra]
                assert [c.elem_id for c in form[2:-1]] == FORM_KEYS
                rows = [lora_row, qlora_row, ptuning_row, freeze_row]
                method.change(method_visibility, method, rows)
                preset.input(on_preset, preset, [*form, *rows])
                validate_btn.click(on_validate, form, [train_msg, yaml_box, command, yaml_file])
                start_btn.click(on_start, form, [train_msg, yaml_box, command, yaml_file, job_pick])
                stop_btn.click(on_stop, job_pick, [job_msg, job_pick])
                resume_btn.click(on_resume, job_pick, [job_msg, job_pick])
                job_pick.input(job_view, job_pick, [progress, loss_plot, log_tail])

            with gr.Tab("Export", id="export", elem_id="tab_export"):
                with gr.Row():
                    export_run = gr.Dropdown(ws.runs(finished_only=True), label="Run", allow_custom_value=True,
                                             elem_id="export_run")
                    export_size = gr.Textbox("2GB", label="Max shard size", elem_id="export_size")
                    export_dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto",
                                               label="dtype", elem_id="export_dtype")
                    export_device = gr.Textbox("cpu", label="Device (cpu, cuda, cuda:1)", elem_id="export_device")
                with gr.Row():
                    export_name = gr.Textbox("merged", label="Output folder (exports/NAME)", elem_id="export_name")
                    export_verify = gr.Checkbox(True, label="Verify merged vs adapter logits",
                                                elem_id="export_verify")
                    export_btn = gr.Button("Export", variant="primary", elem_id="export_start")
                export_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="export_command")
                export_msg = gr.Textbox(label="Status", elem_id="export_msg", interactive=False)
                export_out = gr.Textbox(export_status(), label="Latest export", lines=7, elem_id="export_status",
                                        interactive=False)
                to_chat_btn = gr.Button("Chat with the latest export", elem_id="export_chat")
                export_btn.click(on_export, [export_run, export_size, export_dtype, export_device, export_name,
                                             export_verify], [export_cmd, export_msg])

            with gr.Tab("Evaluate", id="evaluate", elem_id="tab_evaluate"):
                with gr.Row():
                    eval_run = gr.Dropdown(ws.runs(finished_only=True), label="Run", allow_custom_value=True,
                                           elem_id="eval_run")
                    eval_test = gr.Dropdown(ws.data_files(), label="Test file (inside the workspace)",
                                            allow_custom_value=True, elem_id="eval_test")
                    eval_name = gr.Textbox("eval", label="Output folder (evals/NAME)", elem_id="eval_name")
                with gr.Row():
                    eval_limit = gr.Number(None, label="Only the first N samples (empty: all)", precision=0,
                                           elem_id="eval_limit")
                    eval_max_new = gr.Number(128, label="eval.max_new_tokens", precision=0, elem_id="eval_max_new")
                    eval_base = gr.Checkbox(False, label="Base too (base vs tuned)", elem_id="eval_base")
                    eval_forget = gr.Checkbox(False, label="Forgetting check", elem_id="eval_forget")
                with gr.Row():
                    eval_spec = gr.Dropdown(field_specs(), value=default_field_spec() or actions.NO_FIELD_SPEC,
                                            allow_custom_value=True,
                                            label="Field spec (structured answers; a YAML spec in the workspace)",
                                            elem_id="eval_spec")
                    eval_extra = gr.Textbox("", label="More settings: eval.key=value per line", lines=2,
                                            elem_id="eval_extra")
                    eval_btn = gr.Button("Evaluate", variant="primary", elem_id="eval_start")
                eval_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="eval_command")
                eval_msg = gr.Textbox(label="Status", elem_id="eval_msg", interactive=False)
                with gr.Accordion("Latest evaluation job: report.md", open=False, elem_id="eval_report_box"):
                    eval_report = gr.Markdown(elem_id="eval_report")
                gr.Markdown("#### An evaluation's tables (metrics, base vs tuned, confusion matrices, forgetting)")
                with gr.Row():
                    view_pick = gr.Dropdown(actions.evals(ws), label="Evaluation (evals/NAME)", allow_custom_value=True,
                                            elem_id="view_pick", scale=4)
                    view_btn = gr.Button("Show", elem_id="view_run", scale=1)
                view_summary = gr.Markdown(elem_id="view_summary")
                view_table = gr.Dataframe(label="Metrics (×100 where a share; base vs tuned when evaluated)",
                                          elem_id="view_table", interactive=False, wrap=True)
                confusions = gr.State({})
                with gr.Row():
                    with gr.Column(scale=2):
                        cm_pick = gr.Dropdown([], label="Confusion matrix of field", elem_id="cm_pick")
                        cm_table = gr.Dataframe(label="rows = reference, columns = predicted", elem_id="cm_table",
                                                interactive=False)
                    eval_png = gr.Image(label="Confusion matrices (confusion.png)", elem_id="eval_png",
                                        interactive=False, scale=3)
                forget_line = gr.Textbox(label="Forgetting check (general prompts, base vs tuned)",
                                         elem_id="forget_line", interactive=False)
                forget_lost = gr.Dataframe(label="Prompts the tuned model lost", elem_id="forget_lost",
                                           interactive=False, wrap=True)
                view_btn.click(on_view, view_pick, [view_table, view_summary, cm_pick, cm_table, forget_line,
                                                    forget_lost, eval_png, confusions])
                cm_pick.input(confusion_frame, [confusions, cm_pick], cm_table)
                view_pick.focus(lambda: gr.update(choices=actions.evals(ws)), None, view_pick)
                gr.Markdown("#### Compare evaluations side by side (`glmtune eval compare`)")
                with gr.Row():
                    compare_pick = gr.Dropdown(actions.evals(ws), multiselect=True, allow_custom_value=True,
                                               label="Evaluations (evals/NAME)",
                                               elem_id="compare_pick", scale=4)
                    compare_btn = gr.Button("Compare", elem_id="compare_run", scale=1)
                compare_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="compare_command")
                compare_md = gr.Markdown(elem_id="compare_report")
                compare_png = gr.Image(label="compare.png", elem_id="compare_png", interactive=False, height=300)
                compare_btn.click(on_compare, compare_pick, [compare_md, compare_png, compare_cmd])
                compare_pick.focus(lambda: gr.update(choices=actions.evals(ws)), None, compare_pick)
                eval_btn.click(on_eval, [eval_run, eval_test, eval_name, eval_limit, eval_max_new, eval_base,
                                         eval_forget, eval_spec, eval_extra], [eval_cmd, eval_msg])
                eval_spec.focus(lambda: gr.update(choices=field_specs()), None, eval_spec)

            with gr.Tab("Chat", id="chat", elem_id="tab_chat"):
                with gr.Row():
                    chat_source = gr.Dropdown(chat_sources(), label="Run, export, or type endpoint: URL",
                                              allow_custom_value=True, elem_id="chat_source", scale=4)
                    load_btn = gr.Button("Load", elem_id="chat_load", scale=1)
                with gr.Row():
                    chat_adapters = gr.Dropdown([], multiselect=True, label="Also load the adapters of (runs on the "
                                                "same base)", elem_id="chat_adapters", scale=3)
                    chat_pick = gr.Dropdown([], label="Answer with (model name)", allow_custom_value=True,
                                            elem_id="chat_pick", scale=2)
                    chat_key = gr.Textbox("", label="Endpoint API key", type="password", elem_id="chat_key", scale=1)
                chat_status = gr.Textbox(label="Model", elem_id="chat_status", interactive=False)
                chatbot = gr.Chatbot(elem_id="chat", height=360)
                turns = gr.State([])
                with gr.Row():
                    msg = gr.Textbox(elem_id="msg", placeholder="Ask something, press Enter", scale=5,
                                     show_label=False)
                    send = gr.Button("Send", elem_id="send", variant="primary", scale=1)
                with gr.Row():
                    clear = gr.Button("Clear", elem_id="clear")
                    stateless = gr.Checkbox(label="Stateless (every question alone)", value=False,
                                            elem_id="stateless")
                    max_tokens = gr.Slider(1, 2048, value=64, step=1, label="Max new tokens", elem_id="max_tokens")
                system = gr.Textbox(label="System prompt", lines=2, elem_id="system")
                chat_in = [chat_source, chat_adapters, chat_pick, chat_key, msg, turns, stateless, system, max_tokens]
                chat_out = [msg, chatbot, turns, chat_status]
                msg.submit(respond, chat_in, chat_out)
                send.click(respond, chat_in, chat_out)
                clear.click(lambda: ([], []), None, [chatbot, turns])
                load_btn.click(on_load, [chat_source, chat_adapters, chat_key], [chat_status, chat_pick])
                chat_source.input(on_source, chat_source, [chatbot, turns, chat_adapters, chat_pick])
                chat_pick.input(lambda: ([], []), None, [chatbot, turns])

        to_chat_btn.click(to_chat, None, [tabs, chat_source, export_msg])
        plan_btn.click(on_plan, [plan_gpu, *form], [plan_text, plan_hist, plan_advice, advice_pick, plan_cmd])
        apply_btn.click(on_apply, [advice_pick, *form], [*form, plan_msg])
        timer = gr.Timer(2.0)
        tick_out = [jobs_table, job_pick, progress, loss_plot, log_tail, export_out, export_run, chat_source,
                    eval_report, eval_run, eval_test, view_pick]
        timer.tick(on_tick, job_pick, tick_out, show_progress="hidden")
        ui.load(on_tick, job_pick, tick_out)
    return ui


def run(args) -> int:
    from glmtune.web.workspace import Workspace

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token)
    ws = Workspace(args.workspace)
    ui = build_ui(ws)
    auth = (lambda _user, password: hmac.compare_digest(str(password), token)) if token else None
    print(f"glmtune web on http://{args.host}:{args.port} · workspace {ws.root}", flush=True)
    ui.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=True, auth=auth,
        auth_message="any user name; the password is the access token" if token else None,
        allowed_paths=[str(ws.root)], css=CSS)
    return 0


if __name__ == "__main__":
    from glmtune.cli import main

    sys.exit(main(["web", *sys.argv[1:]]))
