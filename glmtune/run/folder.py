"""The run folder: the contract between `glmtune train` and every later stage (eval, export, serve, web).

    config.yaml       the full RunConfig the run trained with (written when training starts)
    method.json       written last, so its presence means "finished": {method, artifact, base, family,
                      trust_remote_code, chat_template_sha256}
    summary.json  data_report.json  skips.jsonl  metrics.jsonl  forgetting.json
    tokenizer/        the tokenizer and chat template the run trained with
    adapter/ | model/ what was trained (the method's `artifact`: a PEFT adapter, freeze's trained tensors in
                      `trained.safetensors`, or a full checkpoint)
    checkpoints/checkpoint-N/ (complete ones carry a marker)   plots/loss.png   tb/
    eval/  export/    written by `glmtune eval` and `glmtune export`

This module is the only code that names these files: training writes through `write_config`/`write_method`,
everything else opens a finished run with `Run.open` (method.json and config.yaml each read once).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from glmtune.config.load import RUN_CONFIG
from glmtune.errors import GlmtuneError

CONFIG = RUN_CONFIG
METHOD = "method.json"
SUMMARY = "summary.json"
DATA_REPORT = "data_report.json"
SKIPS = "skips.jsonl"
METRICS = "metrics.jsonl"
FORGETTING = "forgetting.json"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
LOSS_PLOT = "plots/loss.png"
TENSORBOARD = "tb"
EXPORT = "export"
EVAL = "eval"

_REQUIRED = ("method", "artifact", "base")


class RunFolderError(GlmtuneError):
    """A path given as a run folder is not a finished one (missing, unfinished, or with a broken method.json)."""


def is_finished(path: str | Path) -> bool:
    """`path` holds a finished run (method.json is written last)."""
    return (Path(path) / METHOD).is_file()


def is_started(path: str | Path) -> bool:
    """`path` holds a run that at least started (config.yaml is written first)."""
    return (Path(path) / CONFIG).is_file()


@dataclass
class Run:
    """A finished run folder, opened once: what method.json says, and its config.yaml on first use."""

    dir: Path
    method: str  # the method's registry name
    artifact_name: str  # "adapter" or "model"
    base: str  # the base model as the run recorded it (a folder or `tiny:NAME`)
    family: str | None = None
    trust_remote_code: bool = False
    chat_template_sha256: str | None = None
    meta: dict = field(default_factory=dict, repr=False)  # method.json as written

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Read `path`/method.json; RunFolderError (one line, naming the folder) if it is no finished run."""
        run_dir = Path(path)
        if not run_dir.is_dir():
            why = "no such folder" if not run_dir.exists() else "it is a file"
            raise RunFolderError(f"{run_dir} is not a finished run folder ({why}); train first")
        meta_path = run_dir / METHOD
        if not meta_path.is_file():
            if is_started(run_dir):
                raise RunFolderError(f"{run_dir} is not a finished run folder: training did not finish (config.yaml "
                                     "but no method.json); rerun the same `glmtune train` to resume it")
            raise RunFolderError(f"{run_dir} is not a finished run folder (no method.json); train first")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFolderError(f"{meta_path}: unreadable ({type(err).__name__}: {err})") from None
        if not isinstance(meta, dict):
            raise RunFolderError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
        missing = [k for k in _REQUIRED if not isinstance(meta.get(k), str) or not meta[k]]
        if missing:
            raise RunFolderError(f"{meta_path}: field {missing[0]!r} missing or not a string; "
                                 "the run folder is damaged: train again")
        return cls(run_dir, meta["method"], meta["artifact"], meta["base"], meta.get("family"),
                   bool(meta.get("trust_remote_code", False)), meta.get("chat_template_sha256"), meta)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def artifact(self) -> Path:
        """The folder holding what was trained."""
        return self.dir / self.artifact_name

    @property
    def is_adapter(self) -> bool:
        """What was trained is a PEFT adapter (LoRA, QLoRA, P-Tuning): `artifact/adapter_config.json`."""
        return (self.artifact / "adapter_config.json").is_file()

    @property
    def full_weights(self) -> bool:
        """What was trained is a complete checkpoint (full fine-tuning): config.json + safetensors."""
        return (self.artifact / "config.json").is_file() and any(self.artifact.glob("*.safetensors"))

    @property
    def tokenizer_dir(self) -> Path | None:
        """The tokenizer the run saved, or None (older runs: use the base's)."""
        tok = self.dir / TOKENIZER
        return tok if (tok / "tokenizer_config.json").is_file() else None

    @cached_property
    def base_path(self) -> Path:
        """The base model's folder (a `tiny:NAME` base is built on first use)."""
        from glmtune.models.load import resolve_path

        try:
            return resolve_path(self.base)
        except (FileNotFoundError, ValueError) as err:  # moved or deleted since training; an unknown tiny:NAME
            raise RunFolderError(f"{self.dir}: its base model is not there any more: {err}") from None

    @cached_property
    def config(self):
        """The RunConfig the run trained with (config.yaml, read once)."""
        from glmtune.config.load import ConfigError, load_config

        path = self.dir / CONFIG
        if not path.is_file():
            raise RunFolderError(f"{self.dir}: {CONFIG} missing; the run folder is damaged: train again")
        try:
            return load_config(path)
        except ConfigError as err:
            raise RunFolderError(f"{path}: {err}") from None

    def file(self, name: str) -> Path:
        """A file of the contract above, e.g. `run.file(SUMMARY)`."""
        return self.dir / name


def as_run(run: Run | str | Path) -> Run:
    """`run` opened (a Run passes through), so a caller handed a folder and one handed a Run read it once."""
    return run if isinstance(run, Run) else Run.open(run)


# ---- writing (training only) -----------------------------------------------------------------------------

def write_config(out: Path, cfg) -> None:
    """config.yaml: written when training starts (after the data and model are known good)."""
    from glmtune.config.load import dump_config
    from glmtune.utils.io import atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / CONFIG, dump_config(cfg))


def write_method(out: Path, *, method: str, artifact: str, base: str, family: str, trust_remote_code: bool,
                 tokenizer) -> None:
    """method.json: written last (after the artifact and tokenizer), which makes the run finished."""
    from glmtune.utils.io import atomic_write_json

    atomic_write_json(Path(out) / METHOD, {
        "method": method, "artifact": artifact, "base": base, "family": family,
        "trust_remote_code": trust_remote_code, "chat_template_sha256": template_hash(tokenizer),
    })


def template_hash(tokenizer) -> str:
    """Fingerprint of the chat template a run was trained with; serving refuses a different one."""
    return hashlib.sha256((tokenizer.chat_template or "").encode("utf-8")).hexdigest()
