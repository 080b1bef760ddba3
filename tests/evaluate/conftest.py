"""Evaluation test helpers: a scripted engine (deterministic, counts calls, can die after N batches)."""

from dataclasses import dataclass

import pytest


@dataclass
class FakeCompletion:
    text: str
    prompt_tokens: int = 3
    completion_tokens: int = 2
    finish_reason: str = "stop"


class ScriptedEngine:
    """Answers each prompt via `answer(messages) -> str`; raises after `fail_after` batches."""

    def __init__(self, answer, fail_after=None):
        self.answer = answer
        self.fail_after = fail_after
        self.batches = []

    def generate(self, batch, max_new_tokens=128, temperature=0.0, top_p=1.0):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches.append([m[-1]["content"] for m in batch])
        return [FakeCompletion(self.answer(m)) for m in batch]


@pytest.fixture
def scripted():
    """`scripted(answer_fn, fail_after=None)` -> ScriptedEngine."""
    return ScriptedEngine
