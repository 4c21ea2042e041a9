"""Process health metrics (telemetry/process.py): every serving process, read from /proc at
scrape time, plus GC counts recorded by each process. The gunicorn side (a master and its
workers, a replaced worker) is proven in tests/live/test_gunicorn.py."""

from __future__ import annotations

import gc
import os
import struct
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from conftest import parse_metrics
from llm_router.telemetry import process
from llm_router.telemetry.process import MASTER_PID_ENV, PROCESS_DIR_ENV, ServingProcessCollector

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")

NAMES = {spec.name for spec in process.METRICS}


@pytest.fixture(autouse=True)
def _not_under_gunicorn(monkeypatch):
    monkeypatch.delenv(MASTER_PID_ENV, raising=False)
    monkeypatch.delenv(PROCESS_DIR_ENV, raising=False)


def collected(collector: ServingProcessCollector) -> dict[tuple[str, frozenset], float]:
    """{(name as queried, labels): value} of one collect()."""
    samples = {}
    for family in collector.collect():
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_process(samples: dict, name: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["pid"], dict(labels)["role"]): v
        for (sample, labels), v in samples.items() if sample == name
    }


# --- the real process ---------------------------------------------------------------------------


def test_single_process_reports_itself_with_sane_values():
    me = str(os.getpid())
    before = time.time()
    samples = collected(ServingProcessCollector())
    assert {name for name, _ in samples} == NAMES
    for spec in process.METRICS:
        if spec.name != "llm_router_process_gc_collections_total":
            assert by_process(samples, spec.name).keys() == {(me, "single")}, spec.name

    rss = value(samples, "llm_router_process_resident_memory_bytes", pid=me, role="single")
    vms = value(samples, "llm_router_process_virtual_memory_bytes", pid=me, role="single")
    assert 0 < rss <= vms
    assert value(samples, "llm_router_process_cpu_seconds_total", pid=me, role="single") > 0
    fds = value(samples, "llm_router_process_open_fds", pid=me, role="single")
    assert 0 < fds <= value(samples, "llm_router_process_max_fds", pid=me, role="single")
    assert value(samples, "llm_router_process_threads", pid=me, role="single") >= 1
    started = value(samples, "llm_router_process_start_time_seconds", pid=me, role="single")
    # This process started before the test, and after the machine booted.
    assert 0 < started <= before
    with open("/proc/uptime") as f:
        assert started >= before - float(f.read().split()[0]) - 1


def test_gc_collections_are_counted_per_generation():
    me = str(os.getpid())
    collector = ServingProcessCollector()
    first = collected(collector)
    generations = {
        dict(labels)["generation"]
        for (name, labels), _ in first.items() if name == "llm_router_process_gc_collections_total"
    }
    assert generations == {str(g) for g in range(len(gc.get_stats()))}
    oldest = str(len(gc.get_stats()) - 1)
    gc.collect()
    second = collected(collector)
    name = "llm_router_process_gc_collections_total"
    assert value(second, name, pid=me, role="single", generation=oldest) == (
        value(first, name, pid=me, role="single", generation=oldest) + 1
    )


def test_registered_in_both_registries_metrics_may_render(client, monkeypatch, tmp_path):
    me = str(os.getpid())
    single = parse_metrics(client.get("/metrics").get_data(as_text=True))
    assert ("llm_router_process_resident_memory_bytes", frozenset({("pid", me), ("role", "single")})) in single

    from llm_router.telemetry import metrics as m

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    merged = parse_metrics(generate_latest(m.exposition_registry()).decode())
    assert ("llm_router_process_resident_memory_bytes", frozenset({("pid", me), ("role", "single")})) in merged


def test_a_worker_reports_its_master_and_the_masters_children(monkeypatch):
    # Pretend this process's parent is the gunicorn master: the real /proc is read.
    master, me = os.getppid(), os.getpid()
    monkeypatch.setenv(MASTER_PID_ENV, str(master))
    serving = process.serving_processes()
    assert serving[0] == (master, "master")
    assert (me, "worker") in serving
    assert all(role == "worker" for _, role in serving[1:])

    samples = collected(ServingProcessCollector())
    assert (str(master), "master") in by_process(samples, "llm_router_process_resident_memory_bytes")


def test_an_unrelated_process_with_the_variable_reports_itself_alone(monkeypatch):
    # E.g. a subprocess of a worker: its parent is not the recorded master.
    monkeypatch.setenv(MASTER_PID_ENV, "1" if os.getppid() != 1 else "2")
    assert process.serving_processes() == [(os.getpid(), "single")]
    monkeypatch.setenv(MASTER_PID_ENV, "not-a-pid")
    assert process.serving_processes() == [(os.getpid(), "single")]


# --- robustness ---------------------------------------------------------------------------------


def test_never_raises_and_yields_nothing_off_linux(monkeypatch):
    collector = ServingProcessCollector()

    def boom(*args):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(process, "serving_processes", boom)
    assert list(collector.collect()) == []
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert list(collector.collect()) == []
    assert list(ServingProcessCollector(proc="/nonexistent-proc").collect()) == []


def stat_line(pid: int, ppid: int, state: str = "S", utime: int = 150, stime: int = 50, threads: int = 3,
              start: int = 1000, vsize: int = 1 << 30, rss: int = 2048) -> str:
    # The command name holds a space and a parenthesis, as comm may.
    return (f"{pid} (gunicorn: w) x) {state} {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 {threads} 0 "
            f"{start} {vsize} {rss} 0 0 0\n")


class FakeProc:
    """A /proc tree with chosen processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True)
        (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")

    def add(self, pid: int, ppid: int, *, fds: int | None = 4, limits: bool = True, children: list[int] | None = None,
            **stat) -> None:
        directory = self.root / str(pid)
        (directory / "task" / str(pid)).mkdir(parents=True)
        (directory / "stat").write_text(stat_line(pid, ppid, **stat))
        if fds is not None:
            (directory / "fd").mkdir()
            for fd in range(fds):
                (directory / "fd" / str(fd)).touch()
        if limits:
            (directory / "limits").write_text(
                "Limit                     Soft Limit           Hard Limit           Units     \n"
                "Max open files            4096                 8192                 files     \n"
            )
        if children is not None:
            (directory / "task" / str(pid) / "children").write_text(" ".join(map(str, children)) + " ")


def gc_words(pid: int, start: int, counts: tuple[int, ...], role: str = "") -> bytes:
    role_word = process._role_word(role) if role else 0
    return struct.pack("=12Q", process._MAGIC, pid, start, role_word, len(counts), *counts, *[0] * (7 - len(counts)))


@pytest.mark.parametrize("children_file", [True, False], ids=["children-file", "proc-scan"])
def test_fake_proc_skips_gone_zombie_and_unreadable_processes(tmp_path, monkeypatch, children_file):
    master, me = os.getppid(), os.getpid()
    healthy, zombie, garbage, vanished, no_fd, stale_gc, other, helper = range(90001, 90009)
    proc = FakeProc(tmp_path / "proc")
    kids = [me, healthy, zombie, garbage, vanished, no_fd, stale_gc, helper]
    proc.add(master, 1, children=kids if children_file else None, start=500)
    proc.add(me, master, start=900)
    proc.add(healthy, master, start=1000, rss=1000, utime=300, stime=100)
    proc.add(zombie, master, state="Z")
    proc.add(garbage, master)
    (proc.root / str(garbage) / "stat").write_text("90003 (half")
    # `vanished` is listed as a child but has no /proc entry: it exited mid-scrape.
    proc.add(no_fd, master, fds=None, limits=False)
    proc.add(stale_gc, master, start=4242)
    proc.add(other, 1)  # not a child of the master
    proc.add(helper, master, start=77)  # a child of the master that is no worker

    gc_dir = tmp_path / "gc"
    gc_dir.mkdir()
    (gc_dir / f"gc-{healthy}.bin").write_bytes(gc_words(healthy, 1000, (11, 2, 1)))
    (gc_dir / f"gc-{master}.bin").write_bytes(gc_words(master, 500, (5, 0, 0)))
    (gc_dir / f"gc-{stale_gc}.bin").write_bytes(gc_words(stale_gc, 1, (7, 7, 7)))  # a dead process's file
    (gc_dir / f"gc-{no_fd}.bin").write_bytes(b"short")  # being created
    (gc_dir / f"gc-{helper}.bin").write_bytes(gc_words(helper, 77, (1, 0, 0), role="metrics"))
    monkeypatch.setenv(MASTER_PID_ENV, str(master))
    monkeypatch.setenv(PROCESS_DIR_ENV, str(gc_dir))

    samples = collected(ServingProcessCollector(proc=str(proc.root)))
    rss = by_process(samples, "llm_router_process_resident_memory_bytes")
    expected = {(str(master), "master"), (str(me), "worker"), (str(healthy), "worker"), (str(no_fd), "worker"),
                (str(stale_gc), "worker"), (str(helper), "metrics")}
    assert set(rss) == expected
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    assert rss[(str(healthy), "worker")] == 1000 * page
    assert value(samples, "llm_router_process_cpu_seconds_total", pid=str(healthy), role="worker") == 400 / ticks
    assert value(samples, "llm_router_process_start_time_seconds", pid=str(healthy), role="worker") == (
        1700000000 + 1000 / ticks
    )
    assert value(samples, "llm_router_process_threads", pid=str(healthy), role="worker") == 3
    assert value(samples, "llm_router_process_open_fds", pid=str(healthy), role="worker") == 4
    assert value(samples, "llm_router_process_max_fds", pid=str(healthy), role="worker") == 4096
    # Unreadable values are left out, the rest of the process is still reported.
    assert (str(no_fd), "worker") not in by_process(samples, "llm_router_process_open_fds")
    assert (str(no_fd), "worker") not in by_process(samples, "llm_router_process_max_fds")

    gc_name = "llm_router_process_gc_collections_total"
    assert value(samples, gc_name, pid=str(healthy), role="worker", generation="0") == 11
    assert value(samples, gc_name, pid=str(healthy), role="worker", generation="2") == 1
    assert value(samples, gc_name, pid=str(master), role="master", generation="0") == 5
    # This process's own counts come from gc.get_stats(), not from a file.
    assert value(samples, gc_name, pid=str(me), role="worker", generation="0") is not None
    gc_pids = {dict(labels)["pid"] for (name, labels), _ in samples.items() if name == gc_name}
    assert gc_pids == {str(master), str(me), str(healthy), str(helper)}  # a stale or short file is never read


# --- the GC recorder ------------------------------------------------------------------------------


def my_start_ticks() -> int:
    return process._read_stat("/proc", os.getpid()).start_ticks


def test_gc_recorder_writes_this_process_counts_and_stops_in_a_forked_child(tmp_path):
    directory = str(tmp_path)
    assert process.record_gc(directory)
    try:
        path = Path(process.gc_file(directory, os.getpid()))
        assert path.stat().st_size == 96
        gc.collect()
        own = tuple(entry["collections"] for entry in gc.get_stats())
        assert process.read_gc_file(directory, os.getpid(), my_start_ticks()) == ("", own)
        assert process.read_gc_file(directory, os.getpid(), my_start_ticks() + 1) is None  # a reused pid

        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            code = 0
            try:
                gc.collect()
                gc.collect()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The child's collections went nowhere: the parent's file holds the parent's counts.
        assert process.read_gc_file(directory, os.getpid(), my_start_ticks()) == ("", own)
        assert not Path(process.gc_file(directory, child)).exists()
    finally:
        process.stop_recording_gc()
    assert not path.exists()
    gc.collect()  # the callback stays installed, and writes nothing after stop


def test_a_recorded_role_is_kept_and_validated(tmp_path, monkeypatch):
    assert process.record_gc(str(tmp_path), role="metrics")
    try:
        assert process.read_gc_file(str(tmp_path), os.getpid(), my_start_ticks()).role == "metrics"
        # As a child of a master, this process now reports its recorded role.
        monkeypatch.setenv(MASTER_PID_ENV, str(os.getppid()))
        samples = collected(ServingProcessCollector())
        assert (str(os.getpid()), "metrics") in by_process(samples, "llm_router_process_threads")
    finally:
        process.stop_recording_gc()
    with pytest.raises(ValueError):
        process._role_word("Not A Role")
    assert not process.record_gc(str(tmp_path), role="much-too-long")


def test_directory_housekeeping(tmp_path):
    directory = tmp_path / "process"
    process.prepare_directory(str(directory))
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    (directory / f"gc-{dead}.bin").write_bytes(gc_words(dead, 1, (1, 1, 1)))
    (directory / f"gc-{os.getpid()}.bin").write_bytes(gc_words(os.getpid(), my_start_ticks(), (1, 1, 1)))
    (directory / "unrelated").touch()
    process.prepare_directory(str(directory))
    assert sorted(p.name for p in directory.iterdir()) == [f"gc-{os.getpid()}.bin", "unrelated"]
    process.forget(str(directory), os.getpid())
    (directory / "unrelated").unlink()
    process.remove_directory(str(directory))
    assert not directory.exists()
