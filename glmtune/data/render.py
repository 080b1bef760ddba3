"""Conversation -> (input_ids, labels) with the tokenizer's own chat template.

Labels supervise assistant turns only (-100 elsewhere). Spans are found by rendering prefixes with
the same template serving uses: an assistant turn k covers
`render(messages[:k], add_generation_prompt=True)` .. `render(messages[:k+1])`. GLM-4 closes a turn with
the *next* role token (or nothing at the end), so the token that ends each supervised turn is
supervised too (the next `<|user|>`, or, after the last turn, the closing token the official fine-tuning
code appends: `closing_id`): the model learns to stop (the "never stops under vLLM" bug, GLM-4#297).

>>> # Worked example with GLM-4's template (ids shown as tokens):
>>> # [gMASK] <sop> <|user|> \\n 你好 <|assistant|> | \\n 好 <|user|>
>>> # labels:  -100 ...                       -100 | \\n 好 <|user|>
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from glmtune.config.load import ConfigError
from glmtune.data.formats import Conversation, Source

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: Source
    truncated: bool = False
    turns_lost: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Skip:
    """One dropped or truncated sample, for the run's skip report."""

    source: str
    kind: str  # "dropped" | "truncated" | "bad_record"
    reason: str
    tokens_before: int | None = None
    tokens_after: int | None = None
    turns_lost: int = 0
    supervised_lost: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class TemplateError(ConfigError):
    """The chat template cannot render this data the way training needs (printed as one line by the CLI)."""


# Content is marked with two private-use characters while rendering, so the text a message carries can be told
# apart from the text the template writes (see `chat_ids`).
_OPEN, _CLOSE = "\ue000", "\ue001"


def added_token_texts(tokenizer) -> list[str]:
    """Texts the tokenizer turns into added/special tokens wherever they appear, longest first."""
    texts = {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    texts.update(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted((t for t in texts if t), key=len, reverse=True)


def _render_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template: the one function training, `data render`,
    `data stats`, predict, eval, chat and serve all use.

    Text inside a message is always encoded as text: `<|user|>` typed by a user (or found in a system prompt or a
    tool result) becomes the characters `<`, `|`, `user`..., never the role token, so nobody can forge a turn. The
    official ChatGLM3 `build_single_message` and GLM-4 `build_single_message` encode content the same way.
    Conversations without special-token text take the plain `apply_chat_template` path (identical ids).
    """
    specials = added_token_texts(tokenizer)
    risky = [i for i, m in enumerate(messages)
             if isinstance(m.get("content"), str) and any(t in m["content"] for t in specials)]
    if not risky:
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if not isinstance(out, list):  # transformers 5 returns a BatchEncoding
            out = out["input_ids"]
        return list(out)
    return _chat_ids_literal(tokenizer, messages, add_generation_prompt, risky, specials)


def _chat_ids_literal(tokenizer, messages, add_generation_prompt, risky, specials) -> list[int]:
    import re

    if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in (messages[i] for i in risky)):
        raise TemplateError("a message contains the private-use characters U+E000/U+E001 next to special-token "
                            "text; glmtune cannot tell it apart from the template. Remove them from the data.")
    marked = [dict(m, content=_OPEN + m["content"] + _CLOSE) if i in risky else m for i, m in enumerate(messages)]
    text = _render_text(tokenizer, marked, add_generation_prompt)
    if text.replace(_OPEN, "").replace(_CLOSE, "") != _render_text(tokenizer, messages, add_generation_prompt):
        raise TemplateError("the chat template rewrites message content, so special-token text inside a message "
                            "(e.g. '<|user|>') cannot be kept as text. Remove it from the data or use a template "
                            "that writes content unchanged.")
    # Items: token ids for special tokens the template wrote, text for everything else. Adjacent text (template
    # text and content) is encoded together, exactly as the tokenizer does between two special tokens.
    special_re = re.compile("|".join(re.escape(t) for t in specials))
    items: list = []
    for k, part in enumerate(re.split(f"[{_OPEN}{_CLOSE}]", text)):
        if k % 2 == 1:  # inside a message: text only
            items.append(part)
            continue
        pos = 0
        for m in special_re.finditer(part):
            items.append(part[pos:m.start()])
            items.append(tokenizer.convert_tokens_to_ids(m.group()))
            pos = m.end()
        items.append(part[pos:])
    ids: list[int] = []
    buf = ""
    for it in items + [None]:
        if isinstance(it, str):
            buf += it
            continue
        if buf:
            ids += tokenizer(buf, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            buf = ""
        if it is not None:
            ids.append(it)
    return ids


def chat_format(tokenizer) -> str:
    """Which official chat format the tokenizer's vocabulary belongs to: 'glm4' | 'chatglm3' | 'chatglm' |
    'generic'. It decides how an answer is closed in training (`closing_id`)."""
    def has(*tokens):  # token lookups, not get_vocab(): that builds a 150k-entry dict
        ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        return all(i is not None and i != tokenizer.unk_token_id for i in ids)

    eos = tokenizer.eos_token
    if eos == "<|endoftext|>" and has("<|user|>", "[gMASK]"):
        return "glm4"
    if eos == "</s>" and has("<|user|>", "sop"):
        return "chatglm3"
    if eos == "<eop>" and has("<sop>", "[gMASK]"):
        return "chatglm"
    return "generic"


def closing_id(tokenizer, stop_ids: list[int]) -> int:
    """The supervised token that ends the last answer of a training sample, as the official fine-tuning code has it:
    GLM-4 `finetune.py` (THUDM/GLM-4, since July 2024) appends `<|user|>` (151336), the token the template writes
    after an answer when the user speaks next, so training never shows `<|endoftext|>` mid-chat; ChatGLM3
    `finetune_hf.py` appends eos (`</s>`); ChatGLM-6B's template writes `<eop>` itself. Others: eos."""
    fmt = chat_format(tokenizer)
    if fmt == "glm4":
        return tokenizer.convert_tokens_to_ids("<|user|>")
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return stop_ids[0]


@dataclass
class Renderer:
    """Renders conversations for one tokenizer; `stop_ids` are the tokens that end an answer."""

    tokenizer: object
    stop_ids: list[int]
    loss_on: str = "all_assistant"
    close_id: int | None = None  # appended after a last answer the template leaves open; see `closing_id`
    # Full renders are reused by stats/pre-flight after dataset preparation (same messages, same result).
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.close_id is None:
            self.close_id = closing_id(self.tokenizer, self.stop_ids)
        # ChatGLM-6B's P-Tuning main.py also supervises the <sop> that opens the answer.
        self._open_ids = ({self.tokenizer.convert_tokens_to_ids("<sop>")}
                          if chat_format(self.tokenizer) == "chatglm" else set())

    def render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self._render(messages)
        ids, labels = self._cache[key]
        return list(ids), list(labels)

    def _render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        full = chat_ids(self.tokenizer, messages)
        labels = [IGNORE] * len(full)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.loss_on == "last_turn":
            assistant = assistant[-1:]
        spans = _windowed_spans(self.tokenizer, messages, full, assistant) if len(assistant) > PREFIX_MAX else None
        if spans is None:
            spans = [_prefix_span(self.tokenizer, messages, full, k) for k in assistant]
        stops = set(self.stop_ids) | {self.close_id}
        close_at_end = False
        for start, end in spans:
            labels[start:end] = full[start:end]
            if start > 0 and full[start - 1] in self._open_ids:
                labels[start - 1] = full[start - 1]
            if not stops.intersection(full[max(start, end - 2):end]):
                # The template did not close the turn itself: supervise the token that closes it.
                if end < len(full):
                    labels[end] = full[end]
                else:
                    close_at_end = True
        if messages[-1]["role"] == "assistant" and not stops.intersection(full[-2:]):
            full = full + [self.close_id]
            labels = labels + ([self.close_id] if close_at_end else [IGNORE])
        return full, labels

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Ids of a generation prompt (history ending with a user turn)."""
        return chat_ids(self.tokenizer, messages, add_generation_prompt=True)


def _prefix_span(tokenizer, messages: list[dict], full: list[int], k: int) -> tuple[int, int]:
    """Token span of assistant turn k in `full`, from renders of the conversation's first k(+1) turns."""
    start = len(chat_ids(tokenizer, messages[:k], add_generation_prompt=True))
    through = full if k == len(messages) - 1 else chat_ids(tokenizer, messages[: k + 1])
    end = len(through)
    if (full[:end] != through or start > end) and chat_format(tokenizer) == "chatglm":
        raise TemplateError(
            "chatglm-6b's prompt format ([Round N] 问/答, as its P-Tuning main.py) supervises only the final "
            "answer; earlier answers are history: set data.loss_on=last_turn")
    if full[:end] != through or start > end:
        raise TemplateError(
            "the chat template is not prefix-stable (rendering a conversation's first turns does not give "
            "a prefix of the whole): answers cannot be located. Set model.chat_template to a template "
            "that renders turns independently."
        )
    return start, end


PREFIX_MAX = 8  # conversations with at most this many supervised answers are rendered by prefixes
WINDOW = 2  # exchanges per render in _windowed_spans (apply_chat_template's per-call cost dominates)


def _windowed_spans(tokenizer, messages: list[dict], full: list[int], assistant: list[int]) -> list | None:
    """The spans `_prefix_span` gives, in time linear in the conversation's length; None if not provable here.

    Prefix renders cost O(turns²) (a 10,000-turn chat never finished). Here each render covers only a window
    of WINDOW exchanges (each starting at a user turn), after the system turn: the window's new tokens are
    placed at the offset where its first user turn ends in `full`. Every window's tokens are checked against
    `full` (so the pieces rebuild it exactly); a template whose turns do not render independently fails the
    check and the caller falls back to prefix renders.
    """
    n = len(messages)
    head = messages[:1] if messages[0]["role"] == "system" else []
    s = len(head)
    if s >= n or messages[s]["role"] == "assistant":
        return None
    anchors = [s] + [i for i in range(s + 1, n) if messages[i]["role"] == "user"]
    want = set(assistant)
    length = {s + 1: len(chat_ids(tokenizer, messages[: s + 1]))}  # j -> tokens of messages[:j] in `full`
    gen: dict[int, int] = {}
    for w in range(0, len(anchors), WINDOW):
        a = anchors[w]
        stop = anchors[w + WINDOW] + 1 if w + WINDOW < len(anchors) else n
        base = length[a + 1]
        ctx = chat_ids(tokenizer, head + messages[a: a + 1])
        last = chat_ids(tokenizer, head + messages[a:stop])
        if last[: len(ctx)] != ctx or last[len(ctx):] != full[base: base + len(last) - len(ctx)]:
            return None
        length[stop] = base + len(last) - len(ctx)
        for k in range(a + 1, stop):
            if k not in want:
                continue
            if k + 1 < stop:
                through = chat_ids(tokenizer, head + messages[a: k + 1])
                if last[: len(through)] != through:
                    return None
                length[k + 1] = base + len(through) - len(ctx)
            gen[k] = base + len(chat_ids(tokenizer, head + messages[a:k], add_generation_prompt=True)) - len(ctx)
    if length[n] != len(full):
        return None
    spans = [(gen[k], length[k + 1]) for k in assistant]
    return spans if all(st <= end for st, end in spans) else None


def _shorten_middle(text: str, drop_chars: int) -> str:
    """Cut `drop_chars` characters out of the middle of `text` (both ends often carry instructions).

    Cuts whole characters, never bytes, so no broken UTF-8 reaches the tokenizer.
    >>> _shorten_middle("abcdefghij", 4)
    'abc…hij'
    """
    keep = max(len(text) - drop_chars, 0)
    return text[: (keep + 1) // 2] + "…" + (text[len(text) - keep // 2:] if keep // 2 else "")


def render_with_policy(conv: Conversation, r: Renderer, cutoff: int, policy: str) -> tuple[Example | None, Skip | None]:
    """Render one conversation under the over-length policy (drop | truncate | error-as-skip).

    `truncate` never cuts template or stop tokens: it re-renders a shorter conversation, first dropping the
    oldest user/assistant pairs, then cutting the middle of the longest prompt-side message, and only as a
    last resort the end of the final answer (its closing token is still appended and supervised).
    """
    ids, labels = r.render(conv.messages)
    n0 = len(ids)
    if n0 <= cutoff:
        return Example(ids, labels, conv.source), None
    sup0 = sum(1 for x in labels if x != IGNORE)
    if policy != "truncate":
        kind = "dropped" if policy == "drop" else "too_long"
        return None, Skip(str(conv.source), kind, f"{n0} tokens > cutoff_len {cutoff}", n0, None, 0, sup0)

    msgs = [dict(m) for m in conv.messages]
    turns_lost = 0
    sys_off = 1 if msgs[0]["role"] == "system" else 0
    # 1) oldest turns first, keeping at least the final user/assistant pair: the fewest whole exchanges to
    #    drop, found by bisection on rendered lengths (dropping one at a time re-rendered O(turns²) tokens).
    users = [i for i in range(sys_off + 1, len(msgs)) if msgs[i]["role"] == "user"]
    most = 0  # drops allowed: while more than the final pair is left (the one-at-a-time rule)
    while most < len(users) and len(msgs) - (users[most - 1] if most else sys_off) > 2:
        most += 1

    def after(t: int) -> list[dict]:
        return msgs if t == 0 else msgs[:sys_off] + msgs[users[t - 1]:]

    lo, hi = 0, most  # smallest t in [0, most] whose render fits; `most` if none does
    while lo < hi:
        mid = (lo + hi) // 2
        if len(chat_ids(r.tokenizer, after(mid))) <= cutoff:
            hi = mid
        else:
            lo = mid + 1
    if lo:
        msgs, turns_lost = after(lo), lo
        ids, labels = r.render(msgs)
    # 2) cut the middle of the longest prompt-side message, re-rendering until it fits.
    for _ in range(12):
        if len(ids) <= cutoff:
            break
        prompt_side = [i for i, m in enumerate(msgs[:-1]) if m["role"] != "assistant"]
        if not prompt_side:
            break
        i = max(prompt_side, key=lambda j: len(msgs[j]["content"]))
        text = msgs[i]["content"]
        n_content = len(r.tokenizer.encode(text, add_special_tokens=False))
        if len(text) <= 2 or n_content == 0:
            break
        # Characters to cut, from this message's own chars-per-token ratio, plus a small margin.
        excess = len(ids) - cutoff
        drop = min(len(text) - 1, int(excess * len(text) / n_content) + 2)
        msgs[i]["content"] = _shorten_middle(text, drop)
        ids, labels = r.render(msgs)
    # 3) last resort: shorten the final answer itself (whole characters; its closing token stays).
    for _ in range(8):
        if len(ids) <= cutoff:
            break
        ans = msgs[-1]["content"]
        n_ans = len(r.tokenizer.encode(ans, add_special_tokens=False))
        keep = len(ans) - int((len(ids) - cutoff) * len(ans) / max(n_ans, 1)) - 1
        if keep < 1:
            break
        msgs[-1]["content"] = ans[:keep]
        ids, labels = r.render(msgs)
    if len(ids) > cutoff:
        return None, Skip(str(conv.source), "dropped", f"cannot fit cutoff_len {cutoff} even after truncation "
                          f"({len(ids)} tokens left)", n0, None, turns_lost, sup0)
    sup = sum(1 for x in labels if x != IGNORE)
    skip = Skip(str(conv.source), "truncated", f"{n0} tokens > cutoff_len {cutoff}", n0, len(ids), turns_lost, sup0 - sup)
    return Example(ids, labels, conv.source, truncated=True, turns_lost=turns_lost), skip
