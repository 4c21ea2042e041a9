"""Process health of every serving process: gunicorn's master and each live worker, or the
single process when the router runs outside gunicorn.

prometheus_client's ProcessCollector reads /proc/self, so in multiprocess mode a scrape
would only show whichever worker answered it (and its multiprocess collector drops it
anyway). This collector instead reads /proc/<pid> of the whole serving set when /metrics
is rendered: the master (this worker's parent, recorded by gunicorn_conf.py's on_starting
in LLM_ROUTER_MASTER_PID) and the master's live children. Every value is read at scrape
time, so a dead worker simply vanishes and a new one appears; nothing runs between scrapes.

Garbage-collector counts cannot be read from outside a process. Each gunicorn process
records its own in a 96-byte memory-mapped file (LLM_ROUTER_PROCESS_DIR/gc-<pid>.bin),
written by a gc.callbacks hook when a collection finishes: one aligned 8-byte store, no
lock (a hook that took a lock, such as prometheus_client's value lock, could deadlock when a
collection starts while the same thread holds that lock). The scraping process reads its
own counts directly from gc.get_stats().

Linux only: elsewhere (no /proc) the collector yields nothing. A process that exits
mid-scrape or whose /proc entries cannot be read is skipped (or just the unreadable
value); the collector never raises.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

MASTER_PID_ENV = "LLM_ROUTER_MASTER_PID"
PROCESS_DIR_ENV = "LLM_ROUTER_PROCESS_DIR"
# "metrics": the process gunicorn_conf.when_ready forks to serve /metrics (metrics_server.py).
ROLES = ("master", "worker", "single", "metrics")

# The work of one scrape is bounded: at most this many /proc entries are examined when the
# kernel has no /proc/<pid>/task/<tid>/children, and at most this many workers reported.
MAX_PROC_SCAN = 65536
MAX_WORKERS = 1024


class MetricSpec(NamedTuple):
    name: str  # as queried (counters with _total)
    type: str
    labels: tuple[str, ...]
    help: str


_PROCESS_LABELS = ("pid", "role")
METRICS = (
    MetricSpec("llm_router_process_resident_memory_bytes", "gauge", _PROCESS_LABELS, "Resident memory of a serving process."),
    MetricSpec("llm_router_process_virtual_memory_bytes", "gauge", _PROCESS_LABELS, "Virtual memory of a serving process."),
    MetricSpec("llm_router_process_cpu_seconds_total", "counter", _PROCESS_LABELS, "User and system CPU time of a serving process."),
    MetricSpec("llm_router_process_open_fds", "gauge", _PROCESS_LABELS, "Open file descriptors of a serving process."),
    MetricSpec("llm_router_process_max_fds", "gauge", _PROCESS_LABELS, "Open file descriptor limit (soft) of a serving process."),
    MetricSpec("llm_router_process_threads", "gauge", _PROCESS_LABELS, "OS threads of a serving process."),
    MetricSpec("llm_router_process_start_time_seconds", "gauge", _PROCESS_LABELS, "Start time of a serving process, Unix time."),
    MetricSpec(
        "llm_router_process_gc_collections_total", "counter", (*_PROCESS_LABELS, "generation"),
        "Python garbage collections of a serving process, by generation.",
    ),
)

_log = logging.getLogger(__name__)


# --- reading /proc ---------------------------------------------------------------------------


class ProcessSample(NamedTuple):
    pid: int
    role: str
    resident_bytes: int
    virtual_bytes: int
    cpu_seconds: float
    threads: int
    start_time: float
    start_ticks: int
    open_fds: int | None
    max_fds: int | None
    gc_collections: tuple[int, ...] | None


class _Stat(NamedTuple):
    state: str
    ppid: int
    cpu_ticks: int
    threads: int
    start_ticks: int
    vsize: int
    rss_pages: int


def _read_stat(proc: str, pid: int) -> _Stat | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name is in parentheses and may itself hold spaces or parentheses.
        fields = data[data.rindex(b")") + 2:].split()
        return _Stat(
            state=fields[0].decode(), ppid=int(fields[1]), cpu_ticks=int(fields[11]) + int(fields[12]),
            threads=int(fields[17]), start_ticks=int(fields[19]), vsize=int(fields[20]), rss_pages=int(fields[21]),
        )
    except (OSError, ValueError, IndexError):
        return None


def _open_fds(proc: str, pid: int) -> int | None:
    try:
        return len(os.listdir(f"{proc}/{pid}/fd"))
    except OSError:
        return None


def _max_fds(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/limits", "rb") as f:
            for line in f:
                if line.startswith(b"Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


class _System:
    """Constants of the running system, read once."""

    def __init__(self, proc: str) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.boot_time = None
        with open(f"{proc}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    self.boot_time = float(line.split()[1])
        if self.boot_time is None:
            raise ValueError("no btime in /proc/stat")


def _children(proc: str, parent: int) -> list[int]:
    """Live child pids of ``parent``: from /proc/<parent>/task/*/children when the kernel has
    it (CONFIG_PROC_CHILDREN), else by scanning /proc for processes whose parent it is."""
    children: set[int] = set()
    try:
        tasks = os.listdir(f"{proc}/{parent}/task")
    except OSError:
        return []
    found_children_file = False
    for tid in tasks:
        try:
            with open(f"{proc}/{parent}/task/{tid}/children", "rb") as f:
                children.update(int(pid) for pid in f.read().split())
            found_children_file = True
        except (OSError, ValueError):
            continue
    if found_children_file:
        return sorted(children)
    try:
        with os.scandir(proc) as entries:
            for examined, entry in enumerate(entries):
                if examined >= MAX_PROC_SCAN:
                    break
                if entry.name.isdigit():
                    stat = _read_stat(proc, int(entry.name))
                    if stat is not None and stat.ppid == parent:
                        children.add(int(entry.name))
    except OSError:
        pass
    return sorted(children)


def _master_pid() -> int | None:
    try:
        return int(os.environ[MASTER_PID_ENV])
    except (KeyError, ValueError):
        return None


def serving_processes(proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, role) of every serving process as seen from this one.

    Under gunicorn this process is a worker whose parent is the recorded master (or, if a
    hook ever collects there, the master itself); anything else (no recorded master, or an
    unrelated process that inherited the variable) reports itself alone as ``single``.
    """
    me = os.getpid()
    master = _master_pid()
    if master is None or master not in (me, os.getppid()):
        return [(me, "single")]
    workers = [pid for pid in _children(proc, master) if pid != master][:MAX_WORKERS]
    if me != master and me not in workers:
        workers.append(me)  # always report the process serving the scrape
    # Children are gunicorn workers, unless one recorded another role (record_gc's role).
    return [(master, "master")] + [(pid, "worker") for pid in sorted(workers)]


def _own_gc_collections() -> tuple[int, ...] | None:
    try:
        return tuple(int(generation["collections"]) for generation in gc.get_stats())
    except Exception:  # noqa: BLE001 - not CPython, or a future shape of the stats
        return None


def read_process(pid: int, role: str, system: _System, proc: str = "/proc",
                 gc_dir: str | None = None) -> ProcessSample | None:
    """One process's sample, or None when it is gone, a zombie or unreadable."""
    stat = _read_stat(proc, pid)
    if stat is None or stat.state in ("Z", "X", "x"):
        return None
    if pid == os.getpid():
        collections = _own_gc_collections()
        if role == "worker" and _RECORDER.pid == pid and _RECORDER.role:
            role = _RECORDER.role
    else:
        record = read_gc_file(gc_dir, pid, stat.start_ticks) if gc_dir else None
        collections = record.collections if record else None
        if role == "worker" and record and record.role:
            role = record.role
    return ProcessSample(
        pid=pid, role=role,
        resident_bytes=stat.rss_pages * system.page_size, virtual_bytes=stat.vsize,
        cpu_seconds=stat.cpu_ticks / system.ticks, threads=stat.threads,
        start_time=system.boot_time + stat.start_ticks / system.ticks, start_ticks=stat.start_ticks,
        open_fds=_open_fds(proc, pid), max_fds=_max_fds(proc, pid), gc_collections=collections,
    )


# --- the collector ---------------------------------------------------------------------------


class ServingProcessCollector:
    """prometheus_client collector of the llm_router_process_* metrics (see METRICS)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._system: _System | None = None
        self._warned = False

    def describe(self) -> Iterator:
        # Names only: registering must not read /proc.
        yield from self._families()

    def samples(self) -> list[ProcessSample]:
        if not sys.platform.startswith("linux") or not os.path.isdir(f"{self.proc}/self"):
            return []
        if self._system is None:
            self._system = _System(self.proc)
        gc_dir = os.environ.get(PROCESS_DIR_ENV) or None
        found = []
        for pid, role in serving_processes(self.proc):
            sample = read_process(pid, role, self._system, self.proc, gc_dir)
            if sample is not None:
                found.append(sample)
        return found

    def collect(self) -> Iterator:
        try:
            samples = self.samples()
        except Exception:  # noqa: BLE001 - a scrape must never fail because of /proc
            if not self._warned:
                self._warned = True
                _log.warning("process health metrics unavailable", exc_info=True)
            return
        families = self._families()
        (rss, vms, cpu, open_fds, max_fds, threads, start, collections) = families
        for s in samples:
            labels = [str(s.pid), s.role]
            rss.add_metric(labels, s.resident_bytes)
            vms.add_metric(labels, s.virtual_bytes)
            cpu.add_metric(labels, s.cpu_seconds)
            threads.add_metric(labels, s.threads)
            start.add_metric(labels, s.start_time)
            if s.open_fds is not None:
                open_fds.add_metric(labels, s.open_fds)
            if s.max_fds is not None:
                max_fds.add_metric(labels, s.max_fds)
            for generation, count in enumerate(s.gc_collections or ()):
                collections.add_metric([*labels, str(generation)], count)
        yield from (family for family in families if family.samples)

    @staticmethod
    def _families() -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
        return [kinds[spec.type](spec.name, spec.help, labels=spec.labels) for spec in METRICS]


# --- GC counts of the other processes ----------------------------------------------------------

# gc-<pid>.bin: twelve native uint64 words: magic, pid, start ticks (field 22 of
# /proc/<pid>/stat, so a reused pid never reads a dead process's file), the role the
# process recorded (up to 8 ASCII bytes), generation count, then up to seven
# per-generation collection counts. Aligned 8-byte stores and loads, so a reader never
# sees a torn count.
_MAGIC = 0x4C4C4D52_47433031  # "LLMRGC01"
_WORDS = 12
_ROLE_AT = 3
_GENERATIONS_AT = 4
_COUNTS_AT = 5
_MAX_GENERATIONS = _WORDS - _COUNTS_AT
_FILE_SIZE = _WORDS * 8


class GcRecord(NamedTuple):
    role: str  # "" when the process recorded none
    collections: tuple[int, ...]


def _role_word(role: str) -> int:
    data = role.encode("ascii")
    if len(data) > 8 or not role.replace("_", "").isalpha() or not role.islower():
        raise ValueError(f"role {role!r}: up to 8 lowercase letters")
    return int.from_bytes(data.ljust(8, b"\0"), "little")


def _word_role(word: int) -> str:
    return word.to_bytes(8, "little").rstrip(b"\0").decode("ascii", "replace")


def gc_file(directory: str, pid: int) -> str:
    return os.path.join(directory, f"gc-{pid}.bin")


class _GcRecorder:
    """This process's GC counts in its gc-<pid>.bin, updated when a collection finishes."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.role: str = ""
        self.path: str | None = None
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._hooked = False

    def start(self, directory: str, role: str = "") -> None:
        role_word = _role_word(role) if role else 0
        self.stop()
        pid = os.getpid()
        stat = _read_stat("/proc", pid)
        if stat is None:
            return
        path = gc_file(directory, pid)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, _FILE_SIZE)
            self._map = mmap.mmap(fd, _FILE_SIZE)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("Q")
        stats = gc.get_stats()[:_MAX_GENERATIONS]
        for generation, entry in enumerate(stats):
            self._words[_COUNTS_AT + generation] = entry["collections"]
        self._words[1], self._words[2] = pid, stat.start_ticks
        self._words[_ROLE_AT], self._words[_GENERATIONS_AT] = role_word, len(stats)
        self._words[0] = _MAGIC  # last: the file is valid from here on
        self.pid, self.path, self.role = pid, path, role
        if not self._hooked:
            gc.callbacks.append(self._on_gc)
            self._hooked = True

    def _on_gc(self, phase: str, info: dict) -> None:
        words = self._words
        if phase != "stop" or words is None or self.pid != os.getpid():
            return
        try:
            generation = info["generation"]
            if generation < _MAX_GENERATIONS:
                words[_COUNTS_AT + generation] = gc.get_stats()[generation]["collections"]
        except Exception:  # noqa: BLE001 - a gc callback must never raise
            pass

    def stop(self, remove: bool = False) -> None:
        """Stop writing (and in the process that owns the file, optionally delete it)."""
        words, mapped, path, owner = self._words, self._map, self.path, self.pid
        self._words = self._map = self.pid = self.path = None
        self.role = ""
        if words is not None:
            words.release()
        if mapped is not None:
            mapped.close()
        if remove and path and owner == os.getpid():
            _unlink(path)

    def after_fork_in_child(self) -> None:
        # The inherited map is the parent's file: drop it without touching the file. A
        # gunicorn worker starts its own in post_fork; other children record nothing.
        self._words = None
        self._map = None
        self.pid = self.path = None
        self.role = ""


_RECORDER = _GcRecorder()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RECORDER.after_fork_in_child)


def record_gc(directory: str, role: str = "") -> bool:
    """Record this process's GC counts in ``directory`` from now on; False if that failed.

    ``role``: how a child of the gunicorn master that is not a worker (say a helper process
    forked by the master) labels itself; every role value must be documented in
    docs/metrics.md. Workers and the master pass none.
    """
    try:
        _RECORDER.start(directory, role)
        return _RECORDER.pid is not None
    except Exception:  # noqa: BLE001 - never stop a worker booting over GC counts
        _log.warning("cannot record GC counts in %s", directory, exc_info=True)
        _RECORDER.stop()
        return False


def stop_recording_gc() -> None:
    _RECORDER.stop(remove=True)


def read_gc_file(directory: str, pid: int, start_ticks: int) -> GcRecord | None:
    """What another process recorded, or None (no file, another process's file)."""
    try:
        with open(gc_file(directory, pid), "rb") as f:
            with mmap.mmap(f.fileno(), _FILE_SIZE, access=mmap.ACCESS_READ) as mapped:
                words = memoryview(mapped).cast("Q")
                try:
                    if words[0] != _MAGIC or words[1] != pid or words[2] != start_ticks:
                        return None
                    generations = min(words[_GENERATIONS_AT], _MAX_GENERATIONS)
                    return GcRecord(
                        _word_role(words[_ROLE_AT]), tuple(words[_COUNTS_AT + g] for g in range(generations))
                    )
                finally:
                    words.release()
    except (OSError, ValueError):
        return None


def forget(directory: str, pid: int) -> None:
    """Delete a dead process's file (gunicorn's child_exit)."""
    _unlink(gc_file(directory, pid))


def prepare_directory(directory: str) -> None:
    """Create the directory and delete the files of processes that are gone (the master
    calls this when it starts; files are keyed by pid and start time, so a stale file is
    never read, only cleaned up)."""
    from ..state import private_directory  # a directory of this user, 0700, no symlink

    private_directory(directory)
    prune_directory(directory)


def remove_directory(directory: str) -> None:
    """At the master's exit: delete its own file and those of dead processes, then the
    directory when nothing else (another master sharing it) is left."""
    stop_recording_gc()
    prune_directory(directory)
    try:
        os.rmdir(directory)
    except OSError:
        pass


def prune_directory(directory: str) -> None:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith("gc-") and name.endswith(".bin")):
            continue
        try:
            pid = int(name[3:-4])
        except ValueError:
            continue
        if not os.path.exists(f"/proc/{pid}"):
            _unlink(os.path.join(directory, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

