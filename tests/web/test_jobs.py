"""The job store: detached processes recorded in SQLite, reconciled on read, surviving the store's death."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from glmtune.web.jobs import FAILED, FINISHED, RUNNING, STOPPED, JobError, JobStore

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def wait_status(store: JobStore, job_id: int, want: set[str], timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get(job_id)
        if job.status in want:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {store.get(job_id).status}, wanted {want}:\n{job.log_tail()}")


def wait_log(job, text: str, timeout: float = 30):
    deadline = time.time() + timeout
    while text not in job.log_tail() and time.time() < deadline:
        time.sleep(0.2)
    assert text in job.log_tail()


def test_jobs_finish_or_fail_with_their_exit_code_and_log(tmp_path):
    store = JobStore(tmp_path)
    ok = store.start("script", [PY, "-c", "print('hello from the job')"], name="ok")
    bad = store.start("script", [PY, "-c", "import sys; print('boom'); sys.exit(3)"], name="bad")
    ok, bad = wait_status(store, ok.id, {FINISHED, FAILED}), wait_status(store, bad.id, {FINISHED, FAILED})
    assert (ok.status, ok.exit_code) == (FINISHED, 0) and "hello from the job" in ok.log_tail()
    assert (bad.status, bad.exit_code) == (FAILED, 3) and "boom" in bad.log_tail() and bad.note == "exit code 3"
    assert ok.ended >= ok.started and (tmp_path / "jobs.sqlite").exists()
    assert [j.id for j in store.list()] == [bad.id, ok.id]  # newest first


def test_store_killed_and_restarted_while_a_job_runs(tmp_path):
    """The process that started the job dies (SIGKILL, no clean-up); a new store still sees the job run and end."""
    starter = textwrap.dedent(f"""
        import os, sys
        from glmtune.web.jobs import JobStore
        job = JobStore({str(tmp_path)!r}).start("script", [sys.executable, "-c",
              "import time; time.sleep(4); print('survived')"], name="long")
        print(job.id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([PY, "-c", starter], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -9, p.stderr
    job_id = int(p.stdout.split()[0])
    store = JobStore(tmp_path)  # "restarted": nothing shared with the dead one but the folder
    job = store.get(job_id)
    assert job.status == RUNNING and store.usage(job)["processes"] >= 1
    job = wait_status(store, job_id, {FINISHED, FAILED, STOPPED})
    assert (job.status, job.exit_code) == (FINISHED, 0)
    assert "survived" in job.log_tail()


def test_two_jobs_at_once_stop_and_resume(tmp_path):
    store = JobStore(tmp_path)
    sleeper = [PY, "-c", "import sys, time; print(sys.argv[1:], flush=True); time.sleep(60)", "train.resume=never"]
    a = store.start("train", sleeper, run_dir=tmp_path / "runs" / "a", name="a")
    b = store.start("train", sleeper, run_dir=tmp_path / "runs" / "b", name="b")
    assert {store.get(a.id).status, store.get(b.id).status} == {RUNNING}
    wait_log(a, "['train.resume=never']")  # printed by the job itself, so it is up
    with pytest.raises(JobError, match="still running"):
        store.resume(a.id)
    store.stop(a.id)
    a = wait_status(store, a.id, {STOPPED, FAILED, FINISHED})
    assert a.status == STOPPED and a.exit_code == -signal.SIGTERM
    assert store.get(b.id).status == RUNNING  # the other job is untouched
    with pytest.raises(JobError, match="not running"):
        store.stop(a.id)
    again = store.resume(a.id)
    assert again.parent_id == a.id and again.run_dir == a.run_dir and again.status == RUNNING
    assert again.command[-1] == "train.resume=auto" and "train.resume=never" not in again.command
    wait_log(again, "'train.resume=auto'")
    for j in (again, b):
        store.stop(j.id)
        assert wait_status(store, j.id, {STOPPED, FAILED}).status == STOPPED


def test_a_job_killed_without_a_word_is_failed_and_says_so(tmp_path):
    store = JobStore(tmp_path)
    job = store.start("script", [PY, "-c", "import time; time.sleep(60)"])
    time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)  # wrapper too: no exit-code file is ever written
    job = wait_status(store, job.id, {FAILED, FINISHED, STOPPED})
    assert job.status == FAILED and job.exit_code is None and "without an exit code" in job.note


def test_unknown_job_and_resume_of_non_training_job(tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(JobError, match="no job 7"):
        store.get(7)
    job = wait_status(store, store.start("export", [PY, "-c", "pass"]).id, {FINISHED})
    with pytest.raises(JobError, match="only training jobs resume"):
        store.resume(job.id)


@pytest.mark.slow
def test_real_training_stopped_then_resumed_from_its_last_complete_checkpoint(tmp_path):
    """`glmtune train` as a job: stop it after a checkpoint, resume, and it continues from there to the end."""
    from glmtune.train.callbacks import COMPLETE

    store = JobStore(tmp_path)
    run = tmp_path / "runs" / "stop-resume"
    argv = [PY, "-m", "glmtune", "train", str(ROOT / "glmtune/configs/tiny/lora.yaml"), f"train.output_dir={run}",
            "train.max_steps=12", "train.save_steps=2", "train.eval_steps=null", "data.val_size=0"]
    job = store.start("train", argv, run_dir=run, env={"PYTHONPATH": str(ROOT)})
    deadline = time.time() + 300
    while not list(run.glob(f"checkpoints/checkpoint-*/{COMPLETE}")) and time.time() < deadline:
        assert store.get(job.id).status == RUNNING, job.log_tail()
        time.sleep(0.5)
    store.stop(job.id)
    job = wait_status(store, job.id, {STOPPED, FAILED, FINISHED})
    assert job.status == STOPPED and not (run / "summary.json").exists()
    done = sorted(int(p.parent.name.split("-")[1]) for p in run.glob(f"checkpoints/checkpoint-*/{COMPLETE}"))
    again = wait_status(store, store.resume(job.id).id, {FINISHED, FAILED, STOPPED}, timeout=600)
    assert again.status == FINISHED, again.log_tail()
    assert f"resuming from {run / 'checkpoints' / f'checkpoint-{done[-1]}'}" in again.log_tail(20_000)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12
