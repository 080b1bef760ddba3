"""The oral-reading panel of `glmtune web`'s Data tab: upload iFlytek ISE results and run `glmtune oral build`
on them, with the counts and errors the CLI prints and the equivalent command.

Plugged in through the task registry (`Task.web_data_panel`, task.py): the web app draws every registered task's
panel and knows nothing of this one. The actions are plain functions of the workspace (tested without gradio);
`data_panel` lays out the gradio blocks and wires their events.
"""

from __future__ import annotations

from pathlib import Path

from glmtune.web.workspace import Workspace, check_name

ISE_SUFFIXES = (".xml", ".txt", ".ref", ".jsonl")
ISE_FOLDER = "ise"  # uploads go to <workspace>/ise/NAME/


def save_ise_uploads(ws: Workspace, uploaded: list, folder: str) -> Path:
    """ISE results (*.xml, *.txt, *.ref sidecars, or one .jsonl) into ise/<folder>/, under cleaned base names."""
    return ws.save_uploads(uploaded, ISE_FOLDER, folder, ISE_SUFFIXES, "ISE results")


def oral_inputs(ws: Workspace) -> list[str]:
    """ISE inputs in the workspace: JSONL files of {id, text, ise} and folders holding *.xml / *.txt results."""
    out = list(ws.data_files())
    for top in sorted(ws.root.iterdir()):
        if not top.is_dir() or top.name in ws.OWN_FOLDERS:
            continue
        for d in [top, *sorted(x for x in top.rglob("*") if x.is_dir())]:
            if any(f.is_file() and f.suffix.lower() in (".xml", ".txt") for f in d.iterdir()):
                out.append(ws.rel(d))
    return out


def oral_build(ws: Workspace, source: str, out_name: str, mode: str = "evidence", labels: str = "rubric",
               label_file: str | None = None, on_bad_record: str = "error", rejected: str = "flag") -> tuple[list[str], Path]:
    """`glmtune oral build INPUT --out data/NAME.jsonl ...`: the lines the CLI prints, and the file it wrote.
    An input that stops the build (a bad line with on_bad_record=error) raises OralInputError, as the CLI."""
    from glmtune.tasks.oral_reading.build import build_dataset, load_inputs_report, load_labels
    from glmtune.tasks.oral_reading.records import OralInputError

    src = ws.resolve(source)
    name = check_name(out_name, "output name")
    out = ws.data_dir / (name if name.endswith(".jsonl") else name + ".jsonl")
    try:  # the CLI's messages, with the workspace-relative paths the page shows
        items, loaded = load_inputs_report(src, on_bad_record)
        table = load_labels(ws.resolve(label_file)) if label_file else None
    except OralInputError as err:
        raise OralInputError(str(err).replace(str(ws.root) + "/", "")) from None
    lines = [ln.replace(str(src), ws.rel(src)) for ln in loaded.lines()]
    if table is not None:
        for it in items:
            if it.id in table:
                it.labels, it.remark = table[it.id]
    report = build_dataset(items, out, mode, labels, rejected)
    lines.append(f"wrote {report.written} samples to {ws.rel(out)}; skipped {len(report.skipped)} without labels")
    if report.rejected:
        done = {"flag": "kept with the rejection in the prompt", "keep": "kept as they are", "drop": "dropped"}
        lines.append("ISE-rejected results: " + ", ".join(f"{v} {done[k]}" for k, v in report.rejected.items()))
    if report.warnings:
        lines.append("parser repairs: " + ", ".join(f"{k}={v}" for k, v in sorted(report.warnings.items())))
    return lines, out


def oral_argv(ws: Workspace, source: str, out: Path, mode: str, labels: str, label_file: str | None,
              on_bad_record: str, rejected: str) -> list[str]:
    """The `glmtune oral build ...` arguments the panel's Build stands for (shown as the equivalent command)."""
    argv = ["oral", "build", str(ws.resolve(source)), "--out", str(out), "--mode", mode, "--labels", labels,
            "--on-bad-record", on_bad_record, "--rejected", rejected]
    return argv + (["--label-file", str(ws.resolve(label_file))] if label_file else [])


def data_panel(ws: Workspace, *, data_file) -> None:
    """Draw the panel inside the Data tab (called within its gradio context) and wire its events.
    `data_file`: the tab's data-file dropdown, pointed at the file a build writes."""
    import gradio as gr

    from glmtune.errors import GlmtuneError
    from glmtune.web.actions import cli_line

    def on_ise_upload(files, folder):
        if not files:
            return gr.update(), ""
        try:
            dest = save_ise_uploads(ws, files, folder or ISE_FOLDER)
        except GlmtuneError as err:
            return gr.update(), f"error: {err}"
        return (gr.update(choices=oral_inputs(ws), value=ws.rel(dest)),
                f"saved {len(files)} file(s) to {ws.rel(dest)}")

    def on_oral_build(source, out_name, mode, labels, label_file, on_bad, rejected):
        try:
            lines, out = oral_build(ws, source, out_name, mode, labels, label_file or None, on_bad, rejected)
        except (GlmtuneError, OSError, ValueError) as err:
            return f"error: {err}", "", gr.update()
        cmd = cli_line(oral_argv(ws, source, out, mode, labels, label_file or None, on_bad, rejected))
        return "\n".join(lines), cmd, gr.update(choices=ws.data_files(), value=ws.rel(out))

    gr.Markdown("#### Oral-reading data from ISE results (`glmtune oral build`)")
    with gr.Row():
        ise_upload = gr.File(label="Upload ISE results (*.xml, *.txt, *.ref, or one .jsonl)",
                             file_count="multiple", elem_id="ise_upload", scale=2)
        with gr.Column(scale=3):
            ise_folder = gr.Textbox(ISE_FOLDER, label=f"Upload into {ISE_FOLDER}/NAME", elem_id="ise_folder")
            oral_src = gr.Dropdown(oral_inputs(ws), label="ISE input (JSONL or folder)",
                                   allow_custom_value=True, elem_id="oral_src")
            oral_labelfile = gr.Dropdown(["", *ws.data_files()], value="", allow_custom_value=True,
                                         label="--label-file (teacher scores, optional)", elem_id="oral_labelfile")
    with gr.Row():
        oral_mode = gr.Dropdown(["evidence", "raw"], value="evidence", label="--mode", elem_id="oral_mode")
        oral_labels = gr.Dropdown(["rubric", "teacher"], value="rubric", label="--labels", elem_id="oral_labels")
        oral_bad = gr.Dropdown(["error", "skip"], value="skip", label="--on-bad-record", elem_id="oral_bad")
        oral_rejected = gr.Dropdown(["flag", "keep", "drop"], value="flag", label="--rejected",
                                    elem_id="oral_rejected")
        oral_out = gr.Textbox("oral", label="Output (data/NAME.jsonl)", elem_id="oral_out")
        oral_btn = gr.Button("Build", variant="primary", elem_id="oral_build")
    oral_cmd = gr.Code(label="Equivalent command", language="shell", elem_id="oral_command")
    oral_result = gr.Textbox(label="Build: counts and errors", lines=5, elem_id="oral_result", interactive=False)
    ise_upload.upload(on_ise_upload, [ise_upload, ise_folder], [oral_src, oral_result])
    oral_btn.click(on_oral_build, [oral_src, oral_out, oral_mode, oral_labels, oral_labelfile, oral_bad,
                                   oral_rejected], [oral_result, oral_cmd, data_file])
