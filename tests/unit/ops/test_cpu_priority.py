"""The local stack's CPU priorities (ops/processes.py): what a process may get, and that a spawned
component really runs at it, every thread and its session's autogroup."""
import os
import sys
import time
from pathlib import Path

import pytest

from ops import processes
from ops.processes import allowed_nice, spawn, stop

THREADED = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"


def test_root_may_raise_a_priority_and_anyone_may_lower_one():
    assert allowed_nice(-10, euid=0, rlimit_nice=0) == -10
    assert allowed_nice(10, euid=1000, rlimit_nice=0) == 10
    assert allowed_nice(40, euid=1000, rlimit_nice=0) == 19  # clamped like nice(1)


def test_without_root_a_raise_goes_only_as_far_as_rlimit_nice_allows():
    assert allowed_nice(-10, euid=1000, rlimit_nice=0) == 0  # Linux's default: none
    assert allowed_nice(-10, euid=1000, rlimit_nice=25) == -5  # down to 20 - 25
    assert allowed_nice(-10, euid=1000, rlimit_nice=40) == -10


def _nices(pid: int) -> set[int]:
    """The nice value of every thread of pid (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        out.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return out


def _threads(pid: int, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(list(Path(f"/proc/{pid}/task").iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux /proc")
def test_a_component_spawned_with_a_nice_value_runs_there_threads_and_autogroup_included(tmp_path):
    marker = f"cpu-priority-{os.getpid()}"
    lowered = spawn("sink", [sys.executable, "-c", THREADED, marker], log=tmp_path / "a.log", marker=marker, nice=7)
    plain = spawn("jobs-9", [sys.executable, "-c", THREADED, marker + "-plain"], log=tmp_path / "b.log",
                  marker=marker + "-plain")
    try:
        _threads(lowered.pid, 2)
        _threads(plain.pid, 2)
        assert lowered.alive(), "the marker is still argv's: `down` finds the process"
        assert _nices(lowered.pid) == {7}
        assert _nices(plain.pid) == {os.nice(0)}  # the control: spawned as before
        assert "intelbus starts sink (nice 7)" in (tmp_path / "a.log").read_text()
        autogroup = Path(f"/proc/{lowered.pid}/autogroup")
        if autogroup.exists():  # kernels with autogroup scheduling
            assert autogroup.read_text().split()[-1] == "7"
            assert Path(f"/proc/{plain.pid}/autogroup").read_text().split()[-1] == "0"
    finally:
        stop(lowered, timeout=5)
        stop(plain, timeout=5)
        processes.forget(lowered.pid)
        processes.forget(plain.pid)


def test_the_jobs_workers_and_the_gateway_go_first_and_the_rest_as_before():
    from ops.components import infrastructure
    from ops.services import services
    from ops.settings import Settings

    by_name = {c.name: c.nice for c in services(Settings(jobs_workers=2))}
    assert by_name["jobs-0"] == by_name["jobs-1"] == by_name["gateway"] == -10
    assert by_name["sink"] == by_name["workflows-0"] == 0
    assert all(c.nice == 0 for c in infrastructure(Settings()))  # Kafka, the registry, ClickHouse
    plain = {c.name: c.nice for c in services(Settings(jobs_nice=0, gateway_nice=0))}
    assert plain["jobs-0"] == plain["gateway"] == 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux /proc")
def test_the_nice_value_is_absolute_whatever_the_caller_runs_at():
    """A caller at nice 3 starts a component at 7: 7 (nice(1)'s -n alone would make it 10); the control, a
    component without a priority of its own, runs at the caller's 3."""
    import subprocess

    code = ("import os, subprocess, sys; os.nice(3); from ops.processes import start_niced; "
            "argv = [sys.executable, '-c', 'import time; time.sleep(60)']; out = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}; "
            "print(start_niced(argv, 7, **out).pid, start_niced(argv, 0, **out).pid)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout.split()
    niced, plain = int(out[0]), int(out[1])
    try:
        assert _nices(niced) == {7}
        assert _nices(plain) == {os.nice(0) + 3}
    finally:
        for pid in (niced, plain):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
