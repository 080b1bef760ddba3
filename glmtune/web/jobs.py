"""Jobs that survive the page: each job is its own process, recorded in `<workspace>/jobs.sqlite`.

A job runs a glmtune CLI verb (`python -m glmtune train CONFIG overrides...`, `... export --run ...`) in a new
session (its own process group), under `glmtune.web.wrapper`, which writes the exit code to
`<workspace>/jobs/<id>/exit_code` when the command ends; output goes to `<workspace>/jobs/<id>/log.txt`.
The database holds what was started (id, kind, command, run folder, pid and its start time, times); the state
is reconciled on every read: an exit-code file means finished (0), stopped (a stop was asked) or failed; no
file and a live pid whose start time matches means running; no file and no such process means the job died
without a word (killed with SIGKILL, machine rebooted) and is marked failed, saying so. Nothing lives in the
web server's memory, so closing the page, reloading, or restarting `glmtune web` loses nothing.

    store = JobStore("work")
    job = store.start("train", ["python", "-m", "glmtune", "train", "cfg.yaml"], run_dir="work/runs/a")
    store.stop(job.id); store.resume(job.id)     # SIGTERM to the group; rerun with train.resume=auto
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from glmtune.errors import GlmtuneError

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    run_dir TEXT,
    log_path TEXT NOT NULL,
    exit_path TEXT NOT NULL,
    pid INTEGER,
    pid_started REAL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    exit_code INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    parent_id INTEGER,
    note TEXT
)
"""


class JobError(GlmtuneError):
    """A job action that cannot be done (unknown id, stopping a job that is not running, ...)."""


@dataclass
class Job:
    id: int
    kind: str
    name: str
    command: list[str]
    run_dir: str | None
    log_path: str
    exit_path: str
    pid: int | None
    pid_started: float | None
    status: str
    started: float
    ended: float | None
    exit_code: int | None
    stop_requested: bool
    parent_id: int | None
    note: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        d = dict(row)
        d["command"] = json.loads(d["command"])
        d["stop_requested"] = bool(d["stop_requested"])
        return cls(**d)

    def log_tail(self, n_chars: int = 4000) -> str:
        p = Path(self.log_path)
        if not p.exists():
            return ""
        with p.open("rb") as f:
            f.seek(max(0, p.stat().st_size - n_chars))
            return f.read().decode("utf-8", "replace")


def _process_alive(pid: int | None, pid_started: float | None) -> bool:
    """The job's wrapper is alive: same pid *and* same start time (a recycled pid is another process)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if pid_started is not None and abs(proc.create_time() - pid_started) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class JobStore:
    """The job table of one workspace. Safe to open from several processes (SQLite, WAL mode)."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.db_path = self.workspace / "jobs.sqlite"
        self._children: dict[int, subprocess.Popen] = {}  # started here: reaped so they leave no zombie
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    # -- starting -------------------------------------------------------------------------------------------
    def start(self, kind: str, argv: list[str], run_dir: str | Path | None = None, name: str | None = None,
              parent_id: int | None = None, env: dict | None = None) -> Job:
        """Start `argv` as a detached job (new session, own process group) and record it."""
        argv = [str(a) for a in argv]
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO jobs (kind, name, command, run_dir, log_path, exit_path, status, started, parent_id)"
                " VALUES (?, ?, ?, ?, '', '', ?, ?, ?)",
                (kind, name or kind, json.dumps(argv), str(run_dir) if run_dir else None, RUNNING, time.time(),
                 parent_id))
            job_id = cur.lastrowid
        job_dir = self.workspace / "jobs" / str(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        log_path, exit_path = job_dir / "log.txt", job_dir / "exit_code"
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "glmtune.web.wrapper", str(exit_path), "--", *argv],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    cwd=self.workspace, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            except OSError as err:
                self._update(job_id, status=FAILED, ended=time.time(), log_path=str(log_path),
                             exit_path=str(exit_path), note=f"could not start: {err}")
                raise JobError(f"job {job_id}: could not start {argv[0]}: {err}") from None
        import psutil

        try:
            pid_started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            pid_started = None
        self._children[proc.pid] = proc
        self._update(job_id, pid=proc.pid, pid_started=pid_started, log_path=str(log_path), exit_path=str(exit_path))
        return self.get(job_id)

    # -- reading --------------------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id} in {self.db_path}")
        return self._reconcile(Job.from_row(row))

    def list(self) -> list[Job]:
        with self._connect() as con:
            rows = con.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
        return [self._reconcile(Job.from_row(r)) for r in rows]

    def _reconcile(self, job: Job) -> Job:
        """Bring a job recorded as running up to date with its process and exit-code file."""
        if job.status != RUNNING:
            return job
        child = self._children.get(job.pid or -1)
        if child is not None and child.poll() is not None:
            self._children.pop(job.pid, None)  # reaped: no zombie left behind
        exit_path = Path(job.exit_path) if job.exit_path else None
        if exit_path is not None and exit_path.exists():
            try:
                info = json.loads(exit_path.read_text())
            except (OSError, ValueError):
                return job  # being written right now (it is replaced atomically): read it next time
            code = info.get("exit_code")
            status = FINISHED if code == 0 else STOPPED if job.stop_requested else FAILED
            suffix = " (stopped)" if status == STOPPED else ""
            note = job.note or (None if code == 0 else f"exit code {code}{suffix}")
            self._update(job.id, status=status, exit_code=code, ended=info.get("ended"), note=note)
        elif not job.pid and time.time() - job.started < 30:
            return job  # just inserted; its process is being started by another server right now
        elif not _process_alive(job.pid, job.pid_started):
            # Re-check the file: the job may have ended between the two looks.
            if exit_path is not None and exit_path.exists():
                return self._reconcile(job)
            status = STOPPED if job.stop_requested else FAILED
            note = ("stopped before it could record an exit code" if job.stop_requested
                    else "process ended without an exit code (killed, or the machine restarted)")
            self._update(job.id, status=status, ended=time.time(), note=note)
        else:
            return job
        with self._connect() as con:
            return Job.from_row(con.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone())

    def _update(self, job_id: int, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as con:
            con.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    # -- acting ---------------------------------------------------------------------------------------------
    def stop(self, job_id: int) -> Job:
        """SIGTERM to the job's process group (wrapper + command + anything it started)."""
        job = self.get(job_id)
        if job.status != RUNNING:
            raise JobError(f"job {job_id} is {job.status}, not running: nothing to stop")
        self._update(job.id, stop_requested=1)
        try:
            os.killpg(job.pid, signal.SIGTERM)  # start_new_session: the wrapper leads its own group
        except ProcessLookupError:
            pass  # ended meanwhile; the reconcile below records how
        return self.get(job.id)

    def resume(self, job_id: int) -> Job:
        """Run a stopped or failed training job again in the same run folder with train.resume=auto, which
        continues from the last complete checkpoint (or starts over when there is none)."""
        job = self.get(job_id)
        if job.kind != "train":
            raise JobError(f"job {job_id} is a {job.kind} job; only training jobs resume")
        if job.status == RUNNING:
            raise JobError(f"job {job_id} is still running")
        argv = [a for a in job.command if not a.startswith("train.resume=")] + ["train.resume=auto"]
        return self.start(job.kind, argv, run_dir=job.run_dir, name=job.name, parent_id=job.id)

    def usage(self, job: Job) -> dict | None:
        """What a running job uses: its processes (wrapper and every descendant), resident memory, CPU time."""
        import psutil

        if job.status != RUNNING or not _process_alive(job.pid, job.pid_started):
            return None
        try:
            root = psutil.Process(job.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        rss = cpu = 0.0
        for p in procs:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return {"processes": len(procs), "rss_mb": round(rss / 2**20), "cpu_s": round(cpu, 1)}
