"""Flags may come between the config file and the overrides, as users type them."""

import pytest

from glmtune.cli import parse_command_line


def test_overrides_after_flags_stay_overrides():
    a = parse_command_line(["train", "c.yaml", "--nproc", "2", "train.lr=1e-4", "method.rank=8"])
    assert a.verb == "train" and a.nproc == 2 and a.items == ["c.yaml", "train.lr=1e-4", "method.rank=8"]
    p = parse_command_line(["plan", "c.yaml", "--gpu", "RTX4090-24GB", "data.cutoff_len=1024"])
    assert p.gpu == "RTX4090-24GB" and p.items == ["c.yaml", "data.cutoff_len=1024"]


def test_verbs_with_subcommands_and_errors_still_parse():
    o = parse_command_line(["oral", "metrics", "x.txt", "--json"])
    assert o.verb == "oral" and str(o.file) == "x.txt" and o.json
    with pytest.raises(SystemExit):
        parse_command_line(["no-such-verb"])
    with pytest.raises(SystemExit):
        parse_command_line(["train", "c.yaml", "--no-such-flag"])
