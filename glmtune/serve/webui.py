"""`glmtune webchat --run RUN | --model DIR [--port 7860]`: a gradio chat page on 127.0.0.1 with the
terminal chat's controls: streaming answers, history, Clear, a Stateless toggle (every question
alone), system prompt and max new tokens.

    glmtune webchat --run runs/demo --port 7860   # then open http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "Web chat (gradio) with a run or model, bound to 127.0.0.1."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glmtune.config.cli import add_config_args, add_source_args

    add_source_args(parser)
    add_config_args(parser)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (keep 127.0.0.1 unless you mean to expose it)")
    parser.add_argument("--max-new-tokens", type=int, default=256)


def stream_reply(engine, turns: list[dict], question: str, *, stateless: bool = False, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0):
    """One exchange of a web chat (this page and `glmtune web`'s Chat tab), streamed.

    `engine` is anything with `stream(messages, max_new_tokens=, temperature=)` yielding text pieces: a local
    engine, an adapter of a served base, or an OpenAI-compatible endpoint. `turns` are the exchanges shown so
    far (user/assistant dicts). Yields `(shown, turns)` while the answer grows, then `(shown, shown)` once it is
    complete: the caller keeps the second item as its history. Stateless: the page still shows every exchange,
    but each question is sent alone (with the system prompt). Errors of the engine (GenerationError) propagate.
    """
    from glmtune.serve.chat_cli import ChatSession

    question = (question or "").strip()
    if not question:
        yield list(turns), list(turns)
        return
    session = ChatSession(system=system or None, stateless=stateless, history=list(turns))
    shown = list(turns) + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
    text = ""
    for piece in engine.stream(session.messages_for(question), max_new_tokens=max_new_tokens,
                               temperature=temperature):
        text += piece
        shown[-1] = {"role": "assistant", "content": text}
        yield list(shown), list(turns)
    # A streamer flushes a last incomplete UTF-8 character as U+FFFD; `generate()` and the server drop it, and so
    # does the history here (else the next turn's prompt carries a character the model never produced).
    shown[-1] = {"role": "assistant", "content": text.rstrip("\ufffd").strip()}
    yield shown, shown


def build_ui(engine, max_new_tokens: int = 256):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from glmtune.errors import GenerationError

    def respond(question, turns, stateless, system, max_tokens):
        # `turns` (gr.State) holds plain user/assistant dicts; the Chatbot only displays them.
        try:
            for shown, kept in stream_reply(engine, turns, question, stateless=stateless, system=system,
                                            max_new_tokens=int(max_tokens)):
                yield "", shown, kept
        except GenerationError as err:  # shown on the page (and in the terminal); the page stays usable
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise gr.Error(str(err)) from err

    with gr.Blocks(title=f"glmtune · {engine.name}") as ui:
        gr.Markdown(f"### glmtune chat · `{engine.name}`")
        chatbot = gr.Chatbot(elem_id="chat", height=420)
        turns = gr.State([])
        with gr.Row():
            msg = gr.Textbox(elem_id="msg", placeholder="Ask something, press Enter", scale=5, show_label=False)
            send = gr.Button("Send", elem_id="send", variant="primary", scale=1)
        with gr.Row():
            clear = gr.Button("Clear", elem_id="clear")
            stateless = gr.Checkbox(label="Stateless (every question alone)", value=False, elem_id="stateless")
            max_tokens = gr.Slider(1, 2048, value=max_new_tokens, step=1, label="Max new tokens", elem_id="max_tokens")
        system = gr.Textbox(label="System prompt", lines=2, elem_id="system")
        inputs = [msg, turns, stateless, system, max_tokens]
        msg.submit(respond, inputs, [msg, chatbot, turns])
        send.click(respond, inputs, [msg, chatbot, turns])
        clear.click(lambda: ([], []), None, [chatbot, turns])
    return ui


def run(args) -> int:
    from glmtune.serve.chat_cli import load_engine

    engine = load_engine(args)
    ui = build_ui(engine, args.max_new_tokens)
    print(f"web chat on http://{args.host}:{args.port}")
    ui.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=True)
    return 0
