"""`glmtune chat --run RUN | --model DIR [--prompt "..."] [--stateless] [--system "..."] [--max-new-tokens N]`

With --prompt: answer once and exit (scripts). Otherwise a terminal chat that streams tokens and keeps
the history; commands: /clear (forget the history), /history (show it), /exit.
--stateless sends every question alone (with the system prompt): earlier questions then cannot
disturb later answers, which is what a single-turn fine-tune (e.g. one grading per record) expects.

    glmtune chat --run runs/demo --stateless --system "$(cat rubric.txt)"
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

HELP = "Chat with a run or model in the terminal (streaming, history, /clear, --stateless)."
COMMANDS = "/clear forget the history · /history show it · /exit quit"


@dataclass
class ChatSession:
    """The conversation state shared by the terminal and web chats."""

    system: str | None = None
    stateless: bool = False
    history: list[dict] = field(default_factory=list)  # user/assistant turns only

    def messages_for(self, question: str) -> list[dict]:
        prefix = [{"role": "system", "content": self.system}] if self.system else []
        past = [] if self.stateless else self.history
        return prefix + past + [{"role": "user", "content": question}]

    def record(self, question: str, answer: str) -> None:
        if not self.stateless:  # stateless mode keeps no history, so /history stays empty
            self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    def clear(self) -> None:
        self.history = []

    def render_history(self) -> str:
        if not self.history:
            return "(no history" + (": stateless mode)" if self.stateless else ")")
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self.history)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glmtune.config.cli import add_config_args, add_source_args

    add_source_args(parser)
    add_config_args(parser)
    parser.add_argument("--prompt", help="answer this one question and exit")
    parser.add_argument("--stateless", action="store_true", help="send every question alone (no history)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")


def load_engine(args, cfg=None):
    """The engine of `--run` or `--model` (with the config's model.trust_remote_code and model.dtype)."""
    from glmtune.config.cli import config_from_args
    from glmtune.inference.engine import HFEngine

    cfg = cfg or config_from_args(args)  # validated with --run too: a bad override is an error, not ignored
    if args.run:
        return HFEngine.from_run(args.run)
    return HFEngine.from_model_dir(args.model, trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.model.dtype)


def answer(engine, session: ChatSession, question: str, max_new_tokens: int, temperature: float = 0.0,
           out=None) -> str:
    """Stream one answer to `out` (if given) and record it in the session."""
    pieces = []
    for piece in engine.stream(session.messages_for(question), max_new_tokens=max_new_tokens, temperature=temperature):
        pieces.append(piece)
        if out is not None:
            out.write(piece)
            out.flush()
    text = "".join(pieces).strip()
    session.record(question, text)
    return text


def loop(engine, session: ChatSession, max_new_tokens: int, temperature: float, inp=sys.stdin, out=sys.stdout) -> int:
    out.write(f"glmtune chat · {engine.name}{' · stateless' if session.stateless else ''} · {COMMANDS}\n")
    while True:
        out.write("\nyou> ")
        out.flush()
        line = inp.readline()
        if not line:  # EOF (Ctrl-D or piped input ended)
            out.write("\n")
            return 0
        q = line.strip()
        if not q:
            continue
        if q in ("/exit", "/quit"):
            return 0
        if q == "/clear":
            session.clear()
            out.write("history cleared\n")
            continue
        if q == "/history":
            out.write(session.render_history() + "\n")
            continue
        if q.startswith("/"):
            out.write(f"unknown command {q}; {COMMANDS}\n")
            continue
        out.write("model> ")
        answer(engine, session, q, max_new_tokens, temperature, out)
        out.write("\n")


def run(args) -> int:
    engine = load_engine(args)
    session = ChatSession(system=args.system, stateless=args.stateless)
    if args.prompt is not None:
        answer(engine, session, args.prompt, args.max_new_tokens, args.temperature, sys.stdout)
        sys.stdout.write("\n")
        return 0
    return loop(engine, session, args.max_new_tokens, args.temperature)
