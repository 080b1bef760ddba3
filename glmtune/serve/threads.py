"""The engine's torch threads on a machine it shares: fewer while other processes keep cores busy.

OpenMP splits every op over all its threads and waits for the slowest at the end. When another job keeps a core
busy, the engine's thread on that core runs in the time slices the job leaves, and every op waits for it. Measured
with `benchmarks/serve_vs_vllm.py --busy 1` (one busy-loop process on the 2-core machine, grading workload,
16 clients): 2 threads gave 3.16 req/s, 1 thread 3.68 req/s; on the quiet machine 2 threads gave 4.61.
`ThreadGovernor` reads how much CPU the rest of the machine used in the last second (all cores' busy time less
this process's own and the HTTP process's) and sets the scheduler thread's torch threads to the cores left,
between 1 and the configured number. Hand-written because no library does this: libgomp's dynamic teams
(`OMP_DYNAMIC=true`) size each team by the 1-minute load average, which counts the engine's own threads (a busy
engine would talk itself down to one thread on an idle machine) and lags a minute behind.
"""

from __future__ import annotations

import time


class ThreadGovernor:
    """Call `step()` from the thread that runs the model (torch's thread count is per thread), between steps."""

    def __init__(self, most: int, every_s: float = 1.0, also_mine: tuple[int, ...] = ()):
        """`also_mine`: pids whose CPU is the server's own (the HTTP process), not another job's."""
        import psutil

        self.most, self.every_s = most, every_s
        self.threads = most
        self.changes = 0
        self._psutil = psutil
        self._mine = [psutil.Process()] + [psutil.Process(p) for p in also_mine if psutil.pid_exists(p)]
        self._cores = psutil.cpu_count() or 1
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        t = self._psutil.cpu_times()
        # Linux counts guest time inside user and nice already
        busy = sum(t) - t.idle - sum(getattr(t, f, 0.0) for f in ("iowait", "guest", "guest_nice"))
        mine = 0.0
        for p in self._mine:
            try:
                c = p.cpu_times()
                mine += c.user + c.system
            except self._psutil.Error:
                pass
        return time.monotonic(), busy, mine

    def others(self) -> float | None:
        """Cores the rest of the machine kept busy since the last call, or None within `every_s` of it."""
        now = self._sample()
        elapsed = now[0] - self._last[0]
        if elapsed < self.every_s:
            return None
        busy, mine = now[1] - self._last[1], now[2] - self._last[2]
        self._last = now
        return max(0.0, busy - mine) / elapsed

    def step(self) -> None:
        others = self.others()
        if others is None:
            return
        # a core counts as taken once other jobs use half of it
        want = max(1, min(self.most, int(self._cores - others + 0.5)))
        if want != self.threads:
            import torch

            torch.set_num_threads(want)
            self.threads, self.changes = want, self.changes + 1
