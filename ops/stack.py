"""`intelbus up | down | status`: the local stack as background processes."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass

from ops.components import Component, infrastructure
from ops.install import Missing
from ops.processes import PidFiles, port_open, port_owner, spawn, stop
from ops.settings import Settings


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    healthy: bool
    address: str
    pid: int | None
    uptime_s: float | None
    log: str
    managed: bool  # started by `intelbus up` (pid file) rather than found running
    restarts: int = 0  # by the supervisor, after crashes (ops/supervise.py)
    next_restart_in_s: float | None = None  # crashed: the supervisor starts it again in this many seconds

    def line(self) -> str:
        state = "up" if self.healthy else "down"
        pid = str(self.pid) if self.pid else "-"
        uptime = _human_duration(self.uptime_s) if self.uptime_s is not None else "-"
        origin = "" if self.managed or not self.healthy else "  (not started by intelbus up)"
        restarts = f"  restarted {self.restarts}x after crashes" if self.restarts else ""
        if self.next_restart_in_s is not None:
            restarts += f"  crashed: the supervisor starts it again in {self.next_restart_in_s:.0f}s"
        return (f"{self.name:<11} {state:<5} {self.address:<32} pid {pid:<8} uptime {uptime:<9} "
                f"log {self.log}{origin}{restarts}")


def _human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Stack:
    def __init__(self, settings: Settings, components: list[Component] | None = None, *, out=print):
        self.settings = settings
        self.components = components if components is not None else infrastructure(settings)
        self.pids = PidFiles(settings.stack_path / "run")
        self.out = out

    def status(self) -> list[ComponentStatus]:
        from ops.supervise import read_state

        watches = read_state(self.settings)
        result = []
        for c in self.components:
            record = self.pids.read(c.name)
            alive = record is not None and record.alive()
            result.append(
                ComponentStatus(
                    name=c.name,
                    healthy=c.healthy(),
                    address=c.address,
                    pid=record.pid if alive else None,
                    uptime_s=(time.time() - record.started_at) if alive else None,
                    log=str(c.log),
                    managed=alive,
                    restarts=watches.get(c.name, {}).get("restarts", 0),
                    next_restart_in_s=_restart_in(watches.get(c.name, {}), alive),
                )
            )
        return result

    def up(self, *, timeout: float | None = None, on_infra_ready=None, supervise: bool = True) -> list[ComponentStatus]:
        """Start what is not running, wait until each is healthy. Safe to run twice.

        on_infra_ready runs once the servers answer and before intelbus's own services
        start (they need topics, schemas and tables). With supervise, a supervisor process
        (`intelbus supervise`) then restarts whatever crashes, until `down`.
        """
        ready_called = False
        started = set()
        for c in self.components:
            if c.name in started:
                continue
            if c.is_service and not ready_called and on_infra_ready:
                on_infra_ready()
                ready_called = True
            # a quorum (the cluster profile's three brokers) is launched whole before any is waited for:
            # one broker alone has no controller majority and never becomes healthy
            quorum = getattr(c, "quorum", None)
            group = [m for m in self.components if quorum is not None and getattr(m, "quorum", None) == quorum] or [c]
            launched = [(m, time.monotonic(), self.launch(m)) for m in group]
            for m, t0, result in launched:
                self._await(m, timeout or m.start_timeout, t0, result)
                started.add(m.name)
        if on_infra_ready and not ready_called:
            on_infra_ready()
        if supervise:
            from ops.supervise import ensure_supervisor

            ensure_supervisor(self.settings, out=self.out)
        return self.status()

    def start(self, c: Component, timeout: float | None = None) -> None:
        """Start one component (as `up` does each) and wait until it is healthy: for callers that start
        several at once from threads (bench/bench_jobs.py starts its workers together)."""
        t0 = time.monotonic()
        self._await(c, timeout or c.start_timeout, t0, self.launch(c))

    def launch(self, c: Component, *, blocking: bool = True, only_if_recorded: bool = False):
        """Spawn c unless its recorded process runs: (record, spawned), or None when not blocking
        and `up`, `down` or the supervisor is deciding about c at this moment, or when
        only_if_recorded (the supervisor) and c has no pid file (`down` stopped it).

        Holds c's lock from the check to the pid file written, so `up` and the supervisor never
        start the same component twice, and `down` never races a start."""
        with self.pids.lock(c.name, blocking=blocking) as locked:
            if not locked:
                return None
            record = self.pids.read(c.name)
            if record is None and only_if_recorded:
                return None
            if record and record.alive():
                return record, False
            if record and not record.wait_gone(30):
                raise Missing(f"{c.name} (pid {record.pid}) was killed but is still exiting after 30s; try again")
            if c.healthy():
                return None, False
            if not c.is_local():
                raise Missing(f"{c.name} at {c.address} is not reachable, and intelbus only starts servers on loopback")
            for port in c.ports:
                if port_open("127.0.0.1", port):
                    owner = port_owner(port)
                    who = f" by pid {owner}" if owner else ""
                    raise Missing(f"port {port} (needed by {c.name}) is in use{who}: stop that process or change the address in `intelbus config`")
            c.prepare()
            argv, env = c.command()
            record = spawn(c.name, argv, log=c.stdout_log, marker=c.marker, env=env, cwd=self.settings.stack_path,
                           nice=c.nice)
            self.pids.write(record)
            return record, True

    def _await(self, c: Component, timeout: float, started: float, launched) -> None:
        record, spawned = launched
        if record is None:
            self.out(f"{c.name:<11} already answering at {c.address} (not started by intelbus up; left alone)")
            return
        if not spawned:
            if self._wait_healthy(c, timeout, record):
                self.out(f"{c.name:<11} already running at {c.address} (pid {record.pid})")
                return
            raise Missing(f"{c.name} (pid {record.pid}) runs but is not healthy after {timeout:.0f}s: see {c.log}")
        if not self._wait_healthy(c, timeout, record):
            tail = _tail(c.stdout_log)
            if record.alive():
                what = (f"did not become healthy within {timeout:.0f}s; it is still running (pid {record.pid}): "
                        f"`intelbus status` shows when it is ready, `intelbus down {c.name}` stops it")
            else:
                what = f"exited while starting, after {time.monotonic() - started:.0f}s"
            raise Missing(f"{c.name} {what}; last output: {tail} (logs: {c.log}, {c.stdout_log})")
        self.out(f"{c.name:<11} up at {c.address} in {time.monotonic() - started:.1f}s (pid {record.pid}, log {c.log})")

    def _wait_healthy(self, c: Component, timeout: float, record) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if c.healthy():
                return True
            if not record.alive():
                return False
            time.sleep(0.2)
        return False

    def down(self, *, purge: bool = False, only: set[str] | None = None) -> None:
        """Stop what `up` started (in reverse order), keep data unless purge.

        The supervisor goes first, so nothing is restarted behind `down`; a `down` of named
        components leaves it running: they have no pid file any more, which it reads as
        'stopped on purpose'."""
        from ops.supervise import SUPERVISOR, stop_supervisor

        if only is None:
            stop_supervisor(self.settings, out=self.out)
        # Processes of an earlier `up` that the settings no longer name (it ran with
        # INTELBUS_JOBS_WORKERS=2, this one with 1): first, while the servers they use still run.
        known = {c.name for c in self.components}
        for name in self.pids.names():
            if name in known or name == SUPERVISOR or (only is not None and name not in only):
                continue
            with self.pids.lock(name):
                record = self.pids.read(name)
                if record is not None and stop(record):
                    self.out(f"{name:<11} stopped (pid {record.pid}; started by an earlier `intelbus up` with other settings)")
                self.pids.remove(name)
        done = set()
        for c in reversed(self.components):
            if (only is not None and c.name not in only) or c.name in done:
                continue
            # a quorum stops together: the last broker of three would wait for a majority that left before it
            quorum = getattr(c, "quorum", None)
            group = [m for m in reversed(self.components) if quorum is not None and getattr(m, "quorum", None) == quorum
                     and (only is None or m.name in only)] or [c]
            done.update(m.name for m in group)
            self._stop_together(group)
        if purge:
            shutil.rmtree(self.settings.stack_path, ignore_errors=True)
            self.out(f"removed {self.settings.stack_path}")

    def _stop_together(self, group: list[Component]) -> None:
        """SIGTERM each (under its lock), then wait for all: stop()s in threads."""
        import contextlib
        import threading

        with contextlib.ExitStack() as locks:
            records = []
            for c in group:
                locks.enter_context(self.pids.lock(c.name))
                record = self.pids.read(c.name)
                if record is not None:
                    records.append((c, record))
            stopped = {}
            threads = [threading.Thread(target=lambda c=c, r=r: stopped.__setitem__(c.name, stop(r))) for c, r in records]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c, record in records:
                if stopped.get(c.name):
                    self.out(f"{c.name:<11} stopped (pid {record.pid})")
                self.pids.remove(c.name)


def _restart_in(watch: dict, alive: bool) -> float | None:
    # the supervisor's restart_at is on the system-wide monotonic clock, as is ours
    at = watch.get("restart_at")
    return None if alive or at is None else max(0.0, at - time.monotonic())


def _tail(path, n: int = 1) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])[-300:] if lines else "(empty log)"


def status_json(statuses: list[ComponentStatus], supervisor: dict | None = None) -> str:
    doc = {"healthy": all(s.healthy for s in statuses), "components": [asdict(s) for s in statuses]}
    if supervisor is not None:
        doc["supervisor"] = supervisor
    return json.dumps(
        doc,
        ensure_ascii=False,
        indent=2,
    )
