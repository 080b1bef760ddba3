"""Inference engine over a transformers model: batched generation and token streaming.

CLI chat, web chat, predictions, eval and the HTTP API all talk to an engine, never to the model.
`from_run` puts a run's trained part (adapter or weights) on its base (glmtune.run.load does the loading);
`from_model_dir` loads a plain or exported folder (or `tiny:glm4`). Prompts are rendered with the tokenizer's
own chat template, the same one training used; generation stops on the family's turn-closing tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from glmtune.errors import GenerationError


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def is_prompt_learning(model) -> bool:
    """A PEFT prompt-learning model (P-Tuning v2 prefix) with its prompt active."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


class HFEngine:
    def __init__(self, model, tokenizer, family, name: str = "model"):
        import torch

        from glmtune.models.load import stop_token_ids

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = family
        self.name = name
        self.stop_ids = stop_token_ids(tokenizer, family)
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()  # one generate() at a time on this model; the batching engine batches
        self._torch = torch
        # P-Tuning / prompt learning: transformers' generate() cannot be trusted with PEFT's prefix (5.24 passes
        # its own `cache=` and drops PEFT's `past_key_values`, so the answer is the base model's). Such models
        # generate through the batching engine, which starts every row's cache from the learned prefix itself:
        # one generation path for prefix methods, the one `serve` uses.
        self.prompt_learning = is_prompt_learning(model)
        self._batcher = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_model_dir(cls, path: str, trust_remote_code: bool = False, dtype: str = "auto", name: str | None = None):
        from glmtune.config.schema import ModelSection
        from glmtune.models.load import load

        loaded = load(ModelSection(path=str(path), trust_remote_code=trust_remote_code, dtype=dtype))
        return cls(loaded.model, loaded.tokenizer, loaded.family, name or Path(str(path)).name)

    @classmethod
    def from_run(cls, run, name: str | None = None):
        """Base model + what the run trained (`run`: a folder or an opened glmtune.run.folder.Run)."""
        from glmtune.run.folder import as_run
        from glmtune.run.load import load_trained

        run = as_run(run)
        model, loaded = load_trained(run)
        return cls(model, loaded.tokenizer, loaded.family, name or run.name)

    # ---- prompts --------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from glmtune.data.render import chat_ids

        return chat_ids(self.tokenizer, messages, add_generation_prompt=True)

    def prefix_boundary(self, messages: list[dict], ids: list[int]) -> int:
        """Tokens of `ids` (the rendered `messages`) up to the last message boundary, i.e. the rendering of
        `messages[:-1]` when that is a prefix of `ids` (prefix-stable templates such as GLM-4's); else 0.
        The batching engine may cache the KV of that prefix for later requests that share it."""
        from glmtune.data.render import chat_ids

        if len(messages) < 2:
            return 0
        try:
            head = chat_ids(self.tokenizer, messages[:-1], add_generation_prompt=False)
        except Exception:  # e.g. a template that refuses a conversation ending in a system turn
            return 0
        n = len(head)
        return n if 0 < n < len(ids) and ids[:n] == head else 0

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float) -> dict:
        kw = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, batch: list[list[dict]], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0) -> list[Completion]:
        """Answer several prompts at once (left-padded static batch). A model error raises GenerationError."""
        torch = self._torch
        prompts = [self.prompt_ids(m) for m in batch]
        if self.prompt_learning:
            return self._generate_batched(prompts, max_new_tokens, temperature, top_p)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        try:
            with self.lock, torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask,
                                          **self._gen_kwargs(max_new_tokens, temperature, top_p))
        except Exception as err:
            raise GenerationError(f"generation failed in {self.name}: {type(err).__name__}: {err}") from err
        results = []
        for i, p in enumerate(prompts):
            new = out[i, width:].tolist()
            stop_at = next((j for j, t in enumerate(new) if t in self.stop_ids), None)
            if stop_at is not None:
                new, reason = new[:stop_at], "stop"
            else:
                reason = "length" if len(new) >= max_new_tokens else "stop"
            # a trailing incomplete UTF-8 character is dropped, as the batching engine and streaming do
            text = self.tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")
            results.append(Completion(text.strip(), len(p), len(new) + (stop_at is not None), reason))
        return results

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0) -> Iterator[str]:
        """Yield text pieces as they are generated. A model error raises GenerationError (never a hang)."""
        if self.prompt_learning:
            yield from self._stream_batched(self.prompt_ids(messages), max_new_tokens, temperature, top_p)
            return
        from transformers import TextIteratorStreamer

        from glmtune.inference.detok import strip_stream

        torch = self._torch
        ids = torch.tensor([self.prompt_ids(messages)], device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                      **self._gen_kwargs(max_new_tokens, temperature, top_p))
        failure: list[BaseException] = []

        def work():
            try:
                with self.lock, torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as err:  # the consumer waits on the streamer: end it, then re-raise there
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        # GLM answers start with the newline after <|assistant|> (and ChatGLM3's with a word-start space too)
        yield from strip_stream(streamer)
        thread.join()
        if failure:
            err = failure[0]
            raise GenerationError(f"generation failed in {self.name}: {type(err).__name__}: {err}") from err

    # ---- prefix (prompt-learning) models: through the batching engine ---------------------------
    def _batching(self):
        if self._batcher is None:
            from glmtune.inference.batching import BatchingEngine

            self._batcher = BatchingEngine(self, max_batch_size=16, max_queue=1 << 16)
        return self._batcher

    def _submit(self, prompt, max_new_tokens, temperature, top_p, sink):
        from glmtune.inference.batching import GenRequest

        return self._batching().submit(GenRequest(prompt_ids=list(prompt), max_new_tokens=max_new_tokens,
                                                  temperature=temperature, top_p=top_p, sink=sink))

    def _generate_batched(self, prompts, max_new_tokens, temperature, top_p) -> list[Completion]:
        import queue

        done: queue.Queue = queue.Queue()
        reqs = []
        for i, p in enumerate(prompts):
            def sink(ev, i=i):
                if ev[0] in ("done", "error"):
                    done.put((i, ev))
            reqs.append(self._submit(p, max_new_tokens, temperature, top_p, sink))
        events = dict(done.get() for _ in reqs)
        for i in range(len(reqs)):
            if events[i][0] == "error":
                raise GenerationError(f"generation failed in {self.name}: {events[i][1]}")
        out = []
        for p, req in zip(prompts, reqs):
            reason = req.finish_reason if req.finish_reason in ("stop", "length") else "stop"
            out.append(Completion(req.text.strip(), len(p), len(req.tokens) + (req.stop_token is not None), reason))
        return out

    def _stream_batched(self, prompt, max_new_tokens, temperature, top_p) -> Iterator[str]:
        import queue

        events: queue.Queue = queue.Queue()
        req = self._submit(prompt, max_new_tokens, temperature, top_p, events.put)
        try:
            while True:
                kind, payload = events.get()
                if kind == "delta":
                    if payload:
                        yield payload
                elif kind == "error":
                    raise GenerationError(f"generation failed in {self.name}: {payload}")
                else:
                    return
        finally:
            if req.finish_reason is None:
                self._batching().cancel(req)  # the consumer stopped early

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
