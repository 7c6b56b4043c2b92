"""Background processes started by `intelbus up`, tracked by pid files.

A pid file records the pid, the start time and a marker from the command line, so
`down` stops only a process that `up` started (never a recycled pid).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    started_at: float
    marker: str  # a substring of the process command line
    log: str

    def alive(self) -> bool:
        """True if the recorded process still runs and is the one we started."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if _is_zombie(self.pid):
            return False
        # An empty command line is a process between fork and exec (the java launcher
        # re-executes itself): still ours.
        return not cmdline.strip() or self.marker in cmdline

    def gone(self) -> bool:
        """True once no thread of the recorded process runs any more.

        A killed multi-threaded server's main thread turns zombie first, so `alive()` is already
        False while its other threads still hold its ports and file locks (ClickHouse's
        data/status): a new server started in that window refuses to run.
        """
        if not _is_zombie(self.pid):
            try:
                cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return True
            # still running (or dying, its main thread not a zombie yet), unless the pid is another program's now
            return bool(cmdline.strip()) and self.marker not in cmdline
        # the main thread is a zombie (checked first: a state read later could be older than it)
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return True
        return all(_is_zombie(self.pid, task) for task in tasks)

    def wait_gone(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.gone():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _is_zombie(pid: int, task: str | None = None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # state is the field after the parenthesised command name
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class PidFiles:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def read(self, name: str) -> PidRecord | None:
        try:
            return PidRecord(**json.loads(self.path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, record: PidRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(record.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__))
        tmp.replace(self.path(record.name))

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        """Every process with a pid file, in name order."""
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    @contextlib.contextmanager
    def lock(self, name: str, *, blocking: bool = True):
        """Hold `name`'s lock while deciding to start or stop it (`up`, `down` and the supervisor
        take it, so no two of them start the same component). Yields False when not blocking
        and someone else holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"{name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# The Popen of every process spawned here, until its exit is collected (`forget`). A Popen dropped
# while its process runs goes to subprocess's own list, and every later Popen (a restart of another
# component) reaps that list: the supervisor's `waitpid` then found nothing, and said "exit status
# unknown: the supervisor is not its parent" of a ClickHouse it had started and that was SIGKILLed
# (test_stack_lifecycle, 2026-12-01: the registry's restart came in between).
_SPAWNED: dict[int, subprocess.Popen] = {}


def forget(pid: int) -> None:
    """The process's exit was collected (the supervisor's waitpid): its Popen can go."""
    _SPAWNED.pop(pid, None)


def allowed_nice(requested: int, *, euid: int, rlimit_nice: int) -> int:
    """The nice value a process may get of `requested`: any with root (CAP_SYS_NICE); without it,
    lowering one's priority (0..19) always, raising it only as far as RLIMIT_NICE allows (a soft
    limit r lets nice go down to 20 - r; Linux's default r = 0 allows none)."""
    requested = max(-20, min(19, int(requested)))
    if requested >= 0 or euid == 0:
        return requested
    return min(0, max(requested, 20 - rlimit_nice))


def effective_nice(requested: int) -> int:
    import resource

    return allowed_nice(requested, euid=os.geteuid(), rlimit_nice=resource.getrlimit(resource.RLIMIT_NICE)[0])


def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Linux with autogroup scheduling (sched_autogroup_enabled, Debian's default) shares the CPU
    between sessions first and between a session's threads second: every process `spawn` starts
    is a session of its own, so its nice value alone changes nothing against the other
    components; the session's autogroup nice does (/proc/<pid>/autogroup, sched(7)). False where
    there is no autogroup or it may not be set."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
        return True
    except OSError:
        return False


def start_niced(argv: list[str], nice: int, **popen) -> subprocess.Popen:
    """Popen argv in a session of its own at `nice` (a value `effective_nice` allows; 0: the caller's):
    `nice` execs argv at that priority, so its threads inherit it and the pid and command line stay
    argv's; then the session's autogroup gets it too. The value is absolute: nice(1)'s -n adds to the
    caller's own, so a caller already at -10 (a bench given --bench-nice) started its gateway at -20."""
    delta = nice - os.nice(0) if nice else 0
    proc = subprocess.Popen((["nice", "-n", str(delta)] if delta else []) + argv, start_new_session=True, **popen)
    if nice:
        set_autogroup_nice(proc.pid, nice)
    return proc


def spawn(name: str, argv: list[str], *, log: Path, marker: str, env: dict | None = None, cwd: Path | None = None,
          nice: int = 0) -> PidRecord:
    """Start argv detached from our session, stdout and stderr appended to log; with `nice`, at that
    CPU priority (every thread, and the session's autogroup), as far as `effective_nice` allows."""
    log.parent.mkdir(parents=True, exist_ok=True)
    nice = effective_nice(nice) if nice else 0
    with open(log, "ab") as out:
        at = f" (nice {nice})" if nice else ""
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} intelbus starts {name}{at}: {' '.join(argv)}\n".encode())
        out.flush()
        proc = start_niced(argv, nice, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env={**os.environ, **(env or {})}, cwd=cwd)
    _SPAWNED[proc.pid] = proc
    return PidRecord(name=name, pid=proc.pid, started_at=time.time(), marker=marker, log=str(log))


def stop(record: PidRecord, *, timeout: float = 30.0) -> bool:
    """SIGTERM the process group, SIGKILL after timeout. True if it was running."""
    if not record.alive():
        return False
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.alive():
            return True
        time.sleep(0.2)
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> int | None:
    """Pid listening on a local TCP port, if /proc tells (best effort, for error messages)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid_dir.name)
        except OSError:
            continue
    return None
