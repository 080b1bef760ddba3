"""Read -> validate -> split -> render under the over-length policy, counting every skip.

`prepare(cfg, tokenizer, family)` is what training calls; `load_conversations` is shared with plan/eval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.data.formats import Conversation, DataError, DataIssue, read_file
from glmtune.data.render import Example, Renderer, Skip, render_with_policy


@dataclass
class SkipReport:
    """Every dropped/truncated/bad sample, with counts the run summary prints and saves."""

    skips: list[Skip] = field(default_factory=list)
    seen: int = 0
    used: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for s in self.skips if s.kind == kind)

    def summary(self) -> dict:
        return {
            "samples_seen": self.seen,
            "samples_used": self.used,
            "bad_records_skipped": self.count("bad_record"),
            "dropped_overlength": self.count("dropped"),
            "truncated": self.count("truncated"),
            "turns_lost": sum(s.turns_lost for s in self.skips),
            "supervised_tokens_lost": sum(s.supervised_lost for s in self.skips),
        }

    def lines(self) -> list[str]:
        s = self.summary()
        return [f"samples: {s['samples_used']} used of {s['samples_seen']} read; "
                f"{s['bad_records_skipped']} bad skipped, {s['dropped_overlength']} dropped (too long), "
                f"{s['truncated']} truncated ({s['turns_lost']} turns, {s['supervised_tokens_lost']} answer tokens lost)"]


@dataclass
class Prepared:
    train: list[Example]
    val: list[Example]
    test: list[Conversation]
    report: SkipReport
    renderer: Renderer
    train_conversations: list[Conversation] = field(default_factory=list)
    val_conversations: list[Conversation] = field(default_factory=list)


def demo_files(seed: int = 0) -> dict[str, Path]:
    """The bundled demo set (`data.train=demo`), provided by the default task of `glmtune.tasks`."""
    from glmtune.registry import demo_files as task_demo_files

    return task_demo_files(seed)


def _read(path: str, data_cfg, issues: list[DataIssue]) -> list[Conversation]:
    convs, errs = read_file(path, data_cfg.format, data_cfg.columns)
    issues += errs
    return convs


def load_conversations(data_cfg, which: str = "train") -> tuple[list[Conversation], list[DataIssue]]:
    """Read the configured train/validation/test file ('demo' = the bundled set); issues are returned."""
    issues: list[DataIssue] = []
    path = getattr(data_cfg, which)
    if path is None:
        return [], issues
    if path == "demo":
        path = str(demo_files(data_cfg.split_seed)["train" if which == "train" else "test"])
    return _read(path, data_cfg, issues), issues


def _split(items: list, size: float, rng: random.Random) -> tuple[list, list]:
    if size <= 0 or len(items) < 2:
        return items, []
    n = int(round(size * len(items))) if size < 1 else int(size)
    n = max(1, min(n, len(items) - 1))
    idx = list(range(len(items)))
    rng.shuffle(idx)
    chosen = set(idx[:n])
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]


def split_conversations(data_cfg) -> tuple[list[Conversation], list[Conversation], list[Conversation], list[DataIssue]]:
    train, issues = load_conversations(data_cfg, "train")
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    rng = random.Random(data_cfg.split_seed)
    if data_cfg.test:
        test, more = load_conversations(data_cfg, "test")
        issues += more
    elif data_cfg.train == "demo":
        test = _read(str(demo_files(data_cfg.split_seed)["test"]), data_cfg, issues)
    else:
        train, test = _split(train, data_cfg.test_size, rng)
    if data_cfg.validation:
        val, more = load_conversations(data_cfg, "validation")
        issues += more
    else:
        train, val = _split(train, data_cfg.val_size, rng)
    return train, val, test, issues


def render_sample(conv: Conversation, renderer: Renderer, data_cfg) -> tuple[Example | None, Skip | None]:
    """One conversation -> the (input_ids, labels) training uses, under the data section's cutoff and over-length
    policy. `glmtune data render` shows exactly this."""
    return render_with_policy(conv, renderer, data_cfg.cutoff_len, data_cfg.overlength)


def prepare(cfg, tokenizer, stop_ids: list[int]) -> Prepared:
    """Everything training needs from the data section; raises DataError on bad data unless told to skip."""
    d = cfg.data
    train_c, val_c, test_c, issues = split_conversations(d)
    report = SkipReport()
    unreadable = [i for i in issues if not i.source.line]  # a whole file (e.g. no records): never skippable
    if unreadable or (issues and d.on_bad_record == "error"):
        raise DataError(unreadable or issues)
    if issues:
        report.skips += [Skip(str(i.source), "bad_record", f"{i.field}: {i.message}" if i.field else i.message)
                         for i in issues]
    renderer = Renderer(tokenizer, stop_ids, d.loss_on)

    def render_all(convs: list[Conversation]) -> list[Example]:
        out = []
        for conv in convs:
            report.seen += 1
            ex, skip = render_sample(conv, renderer, d)
            if skip is not None:
                report.skips.append(skip)
            if ex is not None:
                out.append(ex)
        return out

    train, val = render_all(train_c), render_all(val_c)
    report.seen += len({i.source for i in issues})
    too_long = [s for s in report.skips if s.kind == "too_long"]
    if too_long:
        raise DataError([DataIssue(_src(s.source), "<sample>", f"{s.reason} (data.overlength=error)") for s in too_long])
    report.used = len(train) + len(val)
    if not train:
        raise DataError([DataIssue(_src(f"{d.train}:0"), "", f"no training samples left: {report.lines()[0]}")])
    return Prepared(train, val, test_c, report, renderer, train_c, val_c)


def _src(text: str):
    from glmtune.data.formats import Source

    file, _, line = text.rpartition(":")
    return Source(file, int(line) if line.isdigit() else 0)
