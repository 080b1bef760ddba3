"""`python -m glmtune.web.wrapper EXIT_FILE -- CMD ...`: run CMD, then write its exit code to EXIT_FILE.

A job outlives the web server that started it, so the server may not be its parent any more when it ends
and cannot collect its exit code with wait(). This wrapper is the job's parent for its whole life: it waits,
then writes `{"exit_code": N, "ended": T}` atomically; the job store reads that file to tell finished from
failed. SIGTERM/SIGINT reaching the wrapper are passed on to CMD, so a stop always ends in an exit-code file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_exit(path: Path, code: int | None) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"exit_code": code, "ended": time.time()}))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m glmtune.web.wrapper EXIT_FILE -- CMD ...", file=sys.stderr)
        return 2
    exit_file, cmd = Path(argv[0]), argv[2:]
    child: subprocess.Popen | None = None
    asked: list[int] = []

    def forward(signum, _frame):
        # A Python handler (not SIG_IGN, which exec would pass on to the child): the wrapper stays to record.
        asked.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if asked:  # stopped before the command started
        write_exit(exit_file, -asked[0])
        return 1
    try:
        child = subprocess.Popen(cmd)
    except OSError as err:  # the command could not even start: that is a failed job, with a reason in the log
        print(f"error: cannot start {cmd[0]}: {err}", file=sys.stderr, flush=True)
        write_exit(exit_file, 127)
        return 127
    if asked and child.poll() is None:  # a stop that came while the command was being started
        child.send_signal(asked[0])
    code = child.wait()
    write_exit(exit_file, code)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
