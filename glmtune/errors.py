"""The errors glmtune raises on purpose, and the exit code of each kind.

`glmtune.cli.main` catches `GlmtuneError` once and prints `error: <message>` on one line (no traceback),
exiting with the class's `exit_code`; anything else is a bug and keeps its traceback.

    exit  kind                                   classes (and their subclasses)
    0     success
    1     the input was valid, the work failed   RunFailure: GenerationError (the model raised while
                                                 answering), export.merge.ExportFailure (an export did not
                                                 verify, or llama.cpp's converter failed)
    2     the input is wrong (fix and rerun)     GlmtuneError itself; InputError (MissingFileError,
                                                 MethodError); config.load.ConfigError (config files,
                                                 overrides, values; DataError, TemplateError, ...);
                                                 run.folder.RunFolderError (not a finished run folder);
                                                 export.merge.ExportError; train.trainer.DivergedError (a
                                                 non-finite loss: the fix is a setting, e.g. train.lr);
                                                 ResumeError (a checkpoint that cannot resume); ...
                                                 argparse's usage errors exit 2 too
    130   interrupted (Ctrl-C)
"""

from __future__ import annotations


class GlmtuneError(Exception):
    """An error phrased for the user (what failed, where, what to do). Exit code 2 unless a kind says else."""

    exit_code = 2


class InputError(GlmtuneError, ValueError):
    """Arguments, files or settings that cannot work (an empty test set, a bad combination of flags).

    Also a ValueError, so code that guarded against the ValueError raised here before keeps working."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the command was given (or its config names) is not there."""


class MethodError(InputError):
    """A training method cannot run on this model or with these settings (freeze of a missing layer,
    P-Tuning on a model without prefix support, packing with a prefix, ...)."""


class ResumeError(GlmtuneError, RuntimeError):
    """A checkpoint cannot be resumed by this engine / process count; the message says what to do.

    Raised by train/launch.py and by a method that cannot resume (methods/ptuning.py), so it lives here, below both
    (also importable as `glmtune.train.launch.ResumeError`)."""


class RunFailure(GlmtuneError):
    """The input was valid but the work failed (the model raised, training diverged, a check did not pass)."""

    exit_code = 1


class GenerationError(RunFailure, RuntimeError):
    """The model raised while generating an answer (chat, webchat, predict, eval): the command stops."""
