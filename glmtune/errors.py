"""The one base class of the errors glmtune raises on purpose.

`glmtune.cli.main` catches `GlmtuneError` once and prints `error: <message>` on one line, exiting with the
class's `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GlmtuneError(Exception):
    """An error phrased for the user (what failed, where, what to do)."""

    exit_code = 2


class GenerationError(GlmtuneError, RuntimeError):
    """The model raised while generating an answer (chat, webchat, predict, eval): the command stops."""

    exit_code = 1
