"""Incremental detokenization for streaming answers."""

from __future__ import annotations


class Detokenizer:
    """Incremental detokenizer (the prefix/read offsets of TGI and vLLM): O(1) decode per token,
    holds back incomplete UTF-8 and anything that may be the start of a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tok, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix = self.read = 0
        # decoded so far; `text` drops the leading whitespace: GLM's newline after <|assistant|> and, on ChatGLM3's
        # SentencePiece vocabulary, the word-start space of the first word ("<|assistant|>\n Hello")
        self.raw = ""
        self.sent = 0  # characters of `text` already handed out

    @property
    def text(self) -> str:
        return self.raw.lstrip()

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text safe to send now, hit_stop_string)."""
        self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.raw += now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        text = self.text
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s) + 1))
            if at >= 0:
                self.raw = self.raw[: len(self.raw) - len(text) + at]
                return self.flush(), True
        hold = max((len(s) - 1 for s in self.stop), default=0)
        return self._emit(len(text) - hold), False

    def _emit(self, upto: int) -> str:
        # trailing whitespace waits for the next word: an answer's last spaces/newlines are never sent, so the
        # pieces add up to the non-streamed (stripped) answer
        upto = max(min(upto, len(self.text.rstrip())), self.sent)
        piece, self.sent = self.text[self.sent:upto], upto
        return piece

    def flush(self) -> str:
        return self._emit(len(self.text))

    def finish(self, hit_stop_string: bool) -> str:
        """Final text from one full decode (the windowed decode can lag at the very end), then flush.
        A trailing incomplete character is dropped rather than sent as U+FFFD."""
        if not hit_stop_string:
            full = self.tok.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")
            if full.lstrip().startswith(self.text):  # never take back text already sent
                self.raw = full
        return self.flush()


def _rstrip_tail(piece: str) -> str:
    """`piece` without trailing whitespace and U+FFFD (a streamer's flushed incomplete character)."""
    end = len(piece)
    while end and (piece[end - 1].isspace() or piece[end - 1] == "\ufffd"):
        end -= 1
    return piece[:end]


def strip_stream(pieces):
    """Text pieces of one answer without what the non-streamed answer strips: leading whitespace is dropped;
    whitespace and U+FFFD after the last word are held until more text follows, so an answer cut inside a
    multi-byte character ends as `generate()`'s does (decode(...).rstrip("\ufffd").strip())."""
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        body = _rstrip_tail(piece)
        if not body:
            held += piece
            continue
        yield held + body
        held = piece[len(body):]
