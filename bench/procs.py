"""/proc readings for the scenarios: a process tree's CPU and RSS, the machine's CPU, and a
sampler that keeps the peak RSS while a load runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parents() -> dict[int, int]:
    """pid -> ppid for every process (one scan of /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                out[int(entry)] = int(fields[1])
    return out


def children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent`: pid -> its command name (comm)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm, _, rest = stat.partition(" (")[2].rpartition(") ")
            if rest and int(rest.split()[1]) == parent:
                found[int(entry)] = comm
    return found


def tree(root: int) -> list[int]:
    """root and all its descendants (children, grandchildren, ...)."""
    table = parents()
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in table.items() if ppid in frontier]
        found += frontier
    return found


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def kill_if_same(pid: int, started: int | None, sig: int) -> None:
    """Signal pid only if it is still the process that started at `started` (no pid reuse)."""
    if started is not None and start_time(pid) == started:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds (utime + stime) of each process still alive."""
    out = {}
    for pid in pids:
        fields = _stat(pid)
        if fields:
            out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (utime + stime)."""
    return sum(cpu_by_pid(pids).values())


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two cpu_by_pid() readings: processes started meanwhile count from
    zero; one that exited meanwhile counts nothing (its last figures are gone)."""
    return sum(after.get(pid, before.get(pid, 0.0)) - before.get(pid, 0.0) for pid in set(before) | set(after))


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot (all processes: /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


class PeakRss:
    """Samples the RSS of a process tree every `interval` seconds while it runs (a thread):
    the peak of the whole tree and of its busiest member."""

    def __init__(self, root: int, members: "callable | None" = None, interval: float = 0.5) -> None:
        self.root = root
        self.members = members  # () -> the pids to count as workers; default: the whole tree
        self.interval = interval
        self.total = 0.0
        self.per_process = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        pids = tree(self.root)
        values = {pid: rss_mib(pid) for pid in pids}
        self.total = max(self.total, sum(values.values()))
        workers = self.members() if self.members else pids
        if workers:
            self.per_process = max(self.per_process, max(values.get(pid, rss_mib(pid)) for pid in workers))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakRss":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
