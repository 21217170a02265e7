"""CPU of a process tree sampled from /proc, and a free loopback port: what
``benchmarks/flower.py`` measures both systems with (Linux only)."""

from __future__ import annotations

import os
import socket
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu(root: int) -> float:
    """CPU seconds of every descendant of ``root`` (user + system, their reaped children
    included), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15]) / TICK
    total = 0.0
    for pid, cpu in times.items():
        p = parents.get(pid, 0)
        while p not in (0, 1, root):
            p = parents.get(p, 0)
        if p == root and pid != root:
            total += cpu
    return total


class Sampler:
    """Samples this process's descendants' CPU every ``period_s`` in a thread."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, period_s: float) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_cpu(me)))
            self._stop.wait(period_s)

    def at(self, t: float) -> float:
        """The CPU total sampled nearest to ``t``."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]
