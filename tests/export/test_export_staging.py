"""Staging folders of exports killed with `kill -9` are removed by the next export (and reported); the
staging folder of an export that is still running is left alone."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from glmtune.export.config import ExportSection
from glmtune.export.pipeline import export_run


def _partials(folder, name="exp"):
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(rf"\.{name}\.[a-z0-9_]{{8}}\.partial", p.name))


def _kill_mid_export(run, out, extra=()):
    """Start `glmtune export`, SIGKILL it as soon as its staging folder has content; returns that folder."""
    proc = subprocess.Popen([sys.executable, "-m", "glmtune", "export", "--run", str(run), "--out", str(out),
                             "--size", "1MB", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            staged = [out.parent / n for n in _partials(out.parent, out.name)]
            if staged and any(staged[0].iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return staged[0]
            time.sleep(0.005)
        raise AssertionError(f"no staging folder seen; export exit {proc.poll()}: {proc.stdout.read()!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_staging_of_killed_export_is_removed_by_the_next_one(lora_run, tmp_path):
    out = tmp_path / "exp"
    staged = _kill_mid_export(lora_run, out)
    assert staged.is_dir() and not out.exists()  # killed mid-way: only the hidden staging folder is there
    lines = []
    res = export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=out, log=lines.append)
    assert res.out_dir == out and (out / "model.safetensors.index.json").exists()
    assert _partials(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    reported = [line for line in lines if "of killed exports" in line]
    assert len(reported) == 1 and staged.name in reported[0], lines
    assert not any(p.name.startswith(".export") for p in out.iterdir())  # the lock never reaches the export


def test_staging_of_a_running_export_is_kept(lora_run, tmp_path):
    """A second process holds a staging folder (as a running export does); an export beside it must not touch
    it, and removes it once that process is killed."""
    out = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from glmtune.export.pipeline import staging_dir
        with staging_dir({str(out)!r}, log=print) as staging:
            print(staging, flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        held = holder.stdout.readline().strip()
        assert held and os.path.isdir(held), held
        lines = []
        export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=out, log=lines.append)
        assert os.path.isdir(held) and _partials(tmp_path) == [os.path.basename(held)]
        assert not [line for line in lines if "of killed exports" in line], lines
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    lines = []
    export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=out, log=lines.append)
    assert not os.path.exists(held) and _partials(tmp_path) == []
    assert len([line for line in lines if "of killed exports" in line]) == 1, lines


def test_lockless_staging_folders_are_judged_by_age(lora_run, tmp_path):
    """Folders without a lock (from a glmtune before locks, or an export in its first milliseconds): removed
    once clearly abandoned, kept while fresh. Folders of other exports in the same parent are never touched."""
    old, fresh = tmp_path / ".exp.oldoldol.partial", tmp_path / ".exp.freshfre.partial"
    other = tmp_path / ".exp.v2.abcdefgh.partial"  # staging of the export "exp.v2", not ours
    for d in (old, fresh, other):
        d.mkdir()
        (d / "model-00001-of-00002.safetensors").write_bytes(b"x" * 1000)
    stamp = time.time() - 3600
    for d in (old, other):
        os.utime(d, (stamp, stamp))
    lines = []
    export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=tmp_path / "exp", log=lines.append)
    assert not old.exists() and fresh.exists() and other.exists()
    assert len([line for line in lines if old.name in line]) == 1, lines


def test_previous_export_left_by_a_kill_between_renames(tmp_path):
    """atomic_dir swaps folders with two renames; a kill between them leaves `.exp.old` and no `exp`."""
    from glmtune.export.pipeline import sweep_stale_staging

    out, old = tmp_path / "exp", tmp_path / ".exp.old"
    old.mkdir()
    (old / "config.json").write_text("{}")
    lines = []
    sweep_stale_staging(out, lines.append)
    assert (out / "config.json").exists() and not old.exists() and "restored" in lines[0], lines
    old.mkdir()  # with `exp` in place, a leftover `.exp.old` is garbage
    lines = []
    sweep_stale_staging(out, lines.append)
    assert out.exists() and not old.exists() and len(lines) == 1, lines
