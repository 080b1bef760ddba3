"""`glmtune data check FILE...` and `glmtune data stats [CONFIG]` — validate and measure data.

    glmtune data check train.jsonl            # every bad record as file:line: field: message; exit 1 if any
    glmtune data stats configs/tiny_demo.yaml # token lengths with the model's real chat template
    glmtune data render train.jsonl --model ./glm-4-9b-chat [--json]  # exact ids + supervised tokens per sample
"""

from __future__ import annotations

import argparse

from glmtune.config.cli import add_config_args

HELP = ("Check data files (file:line errors), report token-length statistics with the real template, or render "
        "samples to the exact ids and supervised tokens training uses.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="validate records; list every problem; exit 1 if any")
    c.add_argument("files", nargs="+")
    c.add_argument("--format", default="auto", choices=["auto", "messages", "conversations", "sharegpt", "alpaca",
                                                         "columns"])
    c.add_argument("--prompt-column", default=None)
    c.add_argument("--response-column", default=None)
    c.add_argument("--history-column", default=None)
    s = sub.add_parser("stats", help="token-length percentiles (prompt vs supervised) for the configured data")
    add_config_args(s)
    from glmtune.registry import tasks

    for task in tasks().values():  # tables a task adds to `data stats` (e.g. its prompt modes)
        for extra in task.stats_flags:
            s.add_argument(extra.flag, action="store_true", help=extra.help)
    r = sub.add_parser("render", help="the exact token ids training uses per sample, supervised tokens highlighted")
    r.add_argument("file", help="JSONL/JSON data file")
    add_config_args(r)
    r.add_argument("--model", default=None, help="model folder or tiny:NAME (default: the config's model.path)")
    r.add_argument("--json", action="store_true", help='one {"line", "input_ids", "labels"} JSON object per sample')
    r.add_argument("--limit", type=int, default=None, help="render only the first N samples")


def _check(args) -> int:
    from glmtune.config.schema import ColumnMap
    from glmtune.data.formats import DataError, read_file

    cm = ColumnMap(**{k: v for k, v in dict(prompt=args.prompt_column, response=args.response_column,
                                            history=args.history_column).items() if v})
    bad = 0
    for f in args.files:
        try:
            convs, issues = read_file(f, args.format, cm)
        except DataError as err:  # missing, a folder, unreadable: say so and check the other files
            print(err)
            bad += 1
            continue
        for issue in issues:
            print(issue)
        bad += len(issues)
        print(f"{f}: {len(convs)} good record(s), {len(issues)} problem(s)")
    return 1 if bad else 0


def _stats(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from glmtune.config.cli import config_from_args
    from glmtune.data.dataset import load_conversations
    from glmtune.data.render import Renderer
    from glmtune.data.stats import compute_stats, summarize, truncation_preview
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, resolve_path, stop_token_ids

    cfg = config_from_args(args)
    path = resolve_path(cfg.model.path)
    tok = load_tokenizer(path, cfg.model.trust_remote_code, cfg.model.chat_template)
    renderer = Renderer(tok, stop_token_ids(tok, family_of(model_type_of(path))), cfg.data.loss_on)
    convs, issues = load_conversations(cfg.data, "train")
    st = compute_stats(convs, renderer)
    table = Table(title=f"token lengths with {path.name}'s chat template ({st.n} samples, {len(issues)} bad skipped)")
    for col in ("", "p50", "p90", "p99", "max", "mean"):
        table.add_column(col, justify="right")
    for name, vals in (("total", st.total), ("prompt", st.prompt), ("supervised", st.supervised)):
        s = summarize(vals)
        table.add_row(name, *(str(s[k]) for k in ("p50", "p90", "p99", "max", "mean")))
    console = Console()
    console.print(table)
    tp = truncation_preview(st, cfg.data.cutoff_len)
    console.print(f"cutoff_len {tp['cutoff_len']}: {tp['samples_over']} samples over ({tp['share_over']:.1%}), "
                  f"holding {tp['supervised_tokens_in_over']} supervised tokens; template overhead "
                  f"{st.template_overhead} tokens")
    from glmtune.registry import tasks

    for task in tasks().values():
        for extra in task.stats_flags:
            if getattr(args, extra.flag.lstrip("-").replace("-", "_"), False):
                console.print(extra.table(tok))
    return 0



def _render(args) -> int:
    import json
    import sys

    from glmtune.config.cli import config_from_args
    from glmtune.data.dataset import render_sample
    from glmtune.data.formats import read_file
    from glmtune.data.render import Renderer
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, resolve_path, stop_token_ids

    cfg = config_from_args(args)
    path = resolve_path(args.model or cfg.model.path)
    tok = load_tokenizer(path, cfg.model.trust_remote_code, cfg.model.chat_template)
    renderer = Renderer(tok, stop_token_ids(tok, family_of(model_type_of(path))), cfg.data.loss_on)
    convs, issues = read_file(args.file, cfg.data.format, cfg.data.columns)
    for issue in issues:
        print(issue, file=sys.stderr)
    convs = convs[: args.limit] if args.limit is not None else convs
    console = None
    if not args.json:
        from rich.console import Console

        console = Console(highlight=False)
        console.print(f"{path.name}: {len(convs)} sample(s); [reverse] supervised [/reverse] tokens are the ones "
                      f"the loss is computed on, [bold magenta]special[/bold magenta] tokens are real special tokens (text typed "
                      f"in a message never is) (data.loss_on={cfg.data.loss_on}, cutoff_len={cfg.data.cutoff_len})")
    dropped = 0
    for conv in convs:
        ex, skip = render_sample(conv, renderer, cfg.data)
        if ex is None:
            dropped += 1
            print(f"{conv.source}: not trained on: {skip.reason}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"line": conv.source.line, "input_ids": ex.input_ids, "labels": ex.labels}))
        else:
            _print_sample(console, tok, conv, ex, skip)
    if issues or dropped:
        print(f"{args.file}: {len(issues)} bad record(s), {dropped} sample(s) dropped", file=sys.stderr)
    return 1 if issues else 0


def _print_sample(console, tok, conv, ex, skip) -> None:
    """Decoded text with supervised spans in reverse video, then the ids (supervised ones likewise)."""
    from rich.rule import Rule
    from rich.text import Text

    from glmtune.data.render import IGNORE

    flags = [x != IGNORE for x in ex.labels]
    note = f" · truncated: {skip.reason}" if skip is not None else ""
    console.print(Rule(f"{conv.source} · {len(ex.input_ids)} tokens · {ex.n_supervised} supervised{note}",
                       align="left"))
    special = set(tok.all_special_ids)
    text, ids = Text(), Text()
    i = 0
    while i < len(flags):  # decode runs together, so characters spanning several tokens stay whole
        kind = (flags[i], ex.input_ids[i] in special)
        j = i
        while j < len(flags) and (flags[j], ex.input_ids[j] in special) == kind:
            j += 1
        style = " ".join(s for s, on in (("reverse green", kind[0]), ("bold magenta", kind[1])) if on)
        text.append(tok.decode(ex.input_ids[i:j], skip_special_tokens=False), style=style)
        ids.append(" ".join(str(t) for t in ex.input_ids[i:j]) + " ", style=style)
        i = j
    console.print(text)
    console.print(ids)
    # The same in words, for logs and pipes where colours are lost: each supervised span, decoded, with its ids.
    spans, cur = [], []
    for t, f in zip(ex.input_ids, flags):
        if f:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    spans += [cur] if cur else []
    for span in spans:
        console.print(Text(f"supervised: {tok.decode(span, skip_special_tokens=False)!r} = {span}"))


def run(args) -> int:
    return {"check": _check, "stats": _stats, "render": _render}[args.action](args)
