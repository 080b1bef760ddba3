"""`serve.adapt_threads`: the engine's torch threads follow the cores other jobs leave free."""

import subprocess
import sys
import threading
import time

import pytest


def run_in_thread(fn):
    """Run `fn` on a fresh thread (torch's thread count is per thread, like the engine's scheduler thread)."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()))
    t.start()
    t.join()
    return out["value"]


def test_threads_follow_the_cores_other_jobs_leave():
    import torch

    from glmtune.serve.threads import ThreadGovernor

    def governed(samples: list[tuple[float, float, float]], most=2, cores=2):
        g = ThreadGovernor(most, every_s=1.0)
        g._cores = cores
        seq = iter(samples)
        g._sample = lambda: next(seq)
        g._last = g._sample()
        seen = []

        def steps():
            torch.set_num_threads(most)  # as the engine process sets them before its scheduler thread starts
            for _ in samples[1:]:
                g.step()
                seen.append((g.threads, torch.get_num_threads()))
            return seen
        before = torch.get_num_threads()
        try:
            return run_in_thread(steps)
        finally:
            torch.set_num_threads(before)  # the global setting the thread changed

    # (time s, machine busy core-s, this server's core-s), cumulative
    quiet = [(0, 0, 0), (1, 2.0, 1.9), (2, 4.0, 3.8)]
    assert governed(quiet) == [(2, 2), (2, 2)]
    # another job takes a whole core: one thread, and back to two once it stops
    busy = [(0, 0, 0), (1, 2.0, 1.0), (2, 4.0, 2.0), (3, 6.0, 3.9)]
    assert governed(busy) == [(1, 1), (1, 1), (2, 2)]
    # within `every_s` of the last reading nothing changes
    assert governed([(0, 0, 0), (0.5, 1.0, 0.0)]) == [(2, 2)]
    # never below 1, never above the configured number
    assert governed([(0, 0, 0), (1, 8.0, 0.0)], most=4, cores=8) == [(1, 1)]
    assert governed([(0, 0, 0), (1, 0.0, 0.0)], most=2, cores=8) == [(2, 2)]


def test_a_real_busy_process_is_seen(tmp_path):
    """A busy-loop process per core: the governor sees the machine taken and drops to one thread."""
    import os

    from glmtune.serve.threads import ThreadGovernor

    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: nothing to adapt")
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        seen, g = ThreadGovernor(2, every_s=1.0), ThreadGovernor(2, every_s=1.0)
        time.sleep(1.2)
        assert seen.others() > cores - 0.5  # the loops' cores (this process sleeps)
        run_in_thread(g.step)
        assert g.threads == 1 and g.changes == 1
    finally:
        for p in loops:
            p.kill()
