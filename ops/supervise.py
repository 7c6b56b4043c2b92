"""`intelbus supervise`: bring back a component of the local stack that crashed, with backoff.

`intelbus up` starts one supervisor (pid file `supervisor` beside the components', log
`logs/supervisor.log`); `intelbus down` stops it first. Twice a second it looks at each component
that has a pid file: a pid file whose process is gone means a crash (`down` removes the pid file
before anything could call that a crash, under the component's lock), and the component is
started again through `Stack.launch`, the code path of `up`: at once after a first crash, then
after 1 s, 2 s, 4 s ... at most 30 s of consecutive crashes; a component that then runs for 60 s
starts again from at once. (With INTELBUS_STARTUP_TUNING without `restart`: once a second,
and 1 s after the first crash, as before issue 18's recovery work.)

A component without a pid file (stopped by `down NAME`, or never started: `up --infra-only`) is
left alone, and so is a pid file the supervisor's settings do not name (jobs-1 of an
`INTELBUS_JOBS_WORKERS=2 intelbus up`, when the supervisor runs with one worker).

The decisions are pure functions of what was seen and a clock (`decide`, `Backoff`); `Supervisor`
does the looking and the starting.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from zoneinfo import ZoneInfo

from ops import processes
from ops.settings import Settings, load_settings

SUPERVISOR = "supervisor"  # its pid file's name, beside the components' in <stack>/run
CST = ZoneInfo("Asia/Shanghai")

# what a look at one component's pid file found
STOPPED = "stopped"  # no pid file: never started, or `down` on purpose
RUNNING = "running"  # the recorded process runs
DEAD = "dead"        # pid file, process gone: a crash


@dataclass(frozen=True)
class Backoff:
    """Wait before the n-th consecutive restart: none for the first `immediate`, then first_s,
    times factor each time, at most max_s."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0  # running this long after a restart: the next crash starts the count again
    immediate: int = 0  # restarts made at once: a crash is mostly a one-off, a loop backs off after these

    def delay(self, crashes: int) -> float:
        if crashes <= self.immediate:
            return 0.0
        return min(self.max_s, self.first_s * self.factor ** max(0, crashes - 1 - self.immediate))


def default_backoff(settings: Settings) -> tuple[Backoff, float]:
    """The supervisor's backoff and its interval between looks: the first restart at once and a
    look every 0.5 s (the `restart` start-up tuning); without it 1 s and 1 s."""
    from ops.components import startup_tunings

    if "restart" in startup_tunings(settings):
        return Backoff(immediate=1), 0.5
    return Backoff(), 1.0


@dataclass(frozen=True)
class Watch:
    """What the supervisor knows of one component."""

    restarts: int = 0                    # restarts it made, ever (shown by `intelbus status`)
    crashes: int = 0                     # consecutive crashes: the backoff's exponent
    restart_at: float | None = None      # a crash was seen; start again at this time
    starting_since: float | None = None  # restarted, not seen healthy yet
    outage_since: float | None = None    # first crash of this outage (for the recovery time)
    running_since: float | None = None   # seen running (healthy, after a restart) since
    slow_reported: bool = False


def decide(w: Watch, seen: str, healthy: bool | None, now: float, backoff: Backoff,
           start_timeout: float) -> tuple[str, Watch]:
    """The next step for one component: (action, new watch).

    Actions: "none"; "crashed" (log it, a restart is scheduled); "restart" (start it now, then
    `restarted`); "recovered" (healthy again after a restart); "slow" (restarted, not healthy
    within start_timeout: left running, said once); "elsewhere" (it runs again, started by
    someone else: an `intelbus up`). healthy is None when not probed (only a restarted component
    is probed, until it answers).
    """
    if seen == STOPPED:
        return "none", Watch(restarts=w.restarts)
    if seen == RUNNING:
        if w.restart_at is not None:  # crashed, and an `up` was quicker than the backoff
            return "elsewhere", Watch(restarts=w.restarts, crashes=w.crashes, running_since=now)
        if w.starting_since is not None:
            if healthy:
                return "recovered", replace(w, starting_since=None, running_since=now, slow_reported=False,
                                            outage_since=None)
            if now - w.starting_since > start_timeout and not w.slow_reported:
                return "slow", replace(w, slow_reported=True)
            return "none", w
        if w.running_since is None:
            return "none", replace(w, running_since=now)
        if w.crashes and now - w.running_since >= backoff.stable_s:
            return "none", replace(w, crashes=0)
        return "none", w
    # DEAD
    if w.restart_at is None:
        crashes = w.crashes + 1
        return "crashed", replace(w, crashes=crashes, restart_at=now + backoff.delay(crashes), starting_since=None,
                                  running_since=None, slow_reported=False,
                                  outage_since=w.outage_since if w.outage_since is not None else now)
    if now >= w.restart_at:
        return "restart", w
    return "none", w


def restarted(w: Watch, now: float) -> Watch:
    """After a restart was made: its health is watched until it answers."""
    return replace(w, restarts=w.restarts + 1, restart_at=None, starting_since=now)


def restart_failed(w: Watch, now: float, backoff: Backoff) -> Watch:
    """A restart could not be made (port taken, a file missing): try again later, backing off."""
    crashes = w.crashes + 1
    return replace(w, crashes=crashes, restart_at=now + backoff.delay(crashes))


def describe_exit(status: int | None) -> str:
    """A waitpid status in words; None: the supervisor is not the process's parent."""
    if status is None:
        return "exit status unknown: the supervisor is not its parent"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# --- state shared with `intelbus status` ---------------------------------------------------------

def state_path(settings: Settings) -> Path:
    return settings.stack_path / "run" / "supervisor.json"


def read_state(settings: Settings) -> dict:
    """The supervisor's last written view: {component: {"restarts": n, ...}}; {} when none."""
    try:
        return json.loads(state_path(settings).read_text()).get("components", {})
    except (OSError, ValueError, AttributeError):
        return {}


def supervisor_status(settings: Settings) -> dict:
    """For `intelbus status`: does the supervisor run, since when, its log."""
    from ops.processes import PidFiles

    record = PidFiles(settings.stack_path / "run").read(SUPERVISOR)
    alive = record is not None and record.alive()
    return {"running": alive, "pid": record.pid if alive else None,
            "uptime_s": time.time() - record.started_at if alive else None,
            "log": str(log_path(settings))}


def supervisor_line(status: dict) -> str:
    from ops.stack import _human_duration

    if not status["running"]:
        return (f"{SUPERVISOR:<11} down  nothing restarts a crashed component (`intelbus up` starts the supervisor)"
                f"  log {status['log']}")
    return (f"{SUPERVISOR:<11} up    {'restarts what crashes':<32} pid {status['pid']:<8} "
            f"uptime {_human_duration(status['uptime_s']):<9} log {status['log']}")


def log_path(settings: Settings) -> Path:
    return settings.stack_path / "logs" / "supervisor.log"


# --- the process ---------------------------------------------------------------------------------

class Supervisor:
    def __init__(self, settings: Settings, *, backoff: Backoff | None = None, clock=time.monotonic, out=None):
        from ops.services import full_stack

        self.settings = settings
        self.backoff, self.interval = default_backoff(settings)
        if backoff is not None:
            self.backoff = backoff
        self.clock = clock
        self.out = out or self._log
        # every component the settings name; only those with a pid file are watched
        self.stack = full_stack(settings, out=lambda m: None)
        self.watches = {name: Watch(restarts=w.get("restarts", 0)) for name, w in read_state(settings).items()}
        self.exits: dict[int, int] = {}  # pid -> waitpid status, of processes this supervisor started
        self.stopping = False

    @staticmethod
    def _log(message: str) -> None:
        stamp = dt.datetime.now(CST).isoformat(timespec="seconds")
        print(f"{stamp} {message}", flush=True)

    def _reap(self) -> None:
        """Collect the exit status of the processes this supervisor started (its children)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = status
            processes.forget(pid)

    def tick(self) -> None:
        self._reap()
        now = self.clock()
        before = dict(self.watches)
        for c in self.stack.components:
            record = self.stack.pids.read(c.name)
            if record is not None and not record.alive():
                # a crash, or a `down` stopping it: `down` holds the lock until the pid file is gone
                with self.stack.pids.lock(c.name, blocking=False) as free:
                    if not free:
                        continue
                    record = self.stack.pids.read(c.name)
            seen = STOPPED if record is None else RUNNING if record.alive() else DEAD
            old = self.watches.get(c.name, Watch())
            healthy = c.healthy() if seen == RUNNING and old.starting_since is not None else None
            action, w = decide(old, seen, healthy, now, self.backoff, c.start_timeout)
            if action == "crashed":
                self._reap()  # it may have died after this tick's first reaping
                when = "restart now" if w.restart_at <= now else f"restart in {w.restart_at - now:.0f}s"
                self.out(f"{c.name}: pid {record.pid} is gone ({describe_exit(self.exits.pop(record.pid, None))}); "
                         f"{when} (crash {w.crashes} in a row)")
                if w.restart_at <= now:  # no backoff for this one: not a tick later
                    w = self._restart(c, w, now)
            elif action == "restart":
                w = self._restart(c, w, now)
            elif action == "recovered":
                self.out(f"{c.name}: healthy again {now - old.outage_since:.1f}s after the crash was seen "
                         f"(pid {record.pid}, restart {w.restarts})")
            elif action == "slow":
                self.out(f"{c.name}: restarted {now - w.starting_since:.0f}s ago (pid {record.pid}) and not healthy yet; "
                         f"left running (see {c.log})")
            elif action == "elsewhere":
                self.out(f"{c.name}: running again (pid {record.pid}), started by someone else (`intelbus up`)")
            self.watches[c.name] = w
        if self.watches != before:
            self._write_state()

    def _restart(self, c, w: Watch, now: float) -> Watch:
        from ops.install import Missing

        try:
            launched = self.stack.launch(c, blocking=False, only_if_recorded=True)
        except (Missing, OSError) as exc:
            w = restart_failed(w, now, self.backoff)
            self.out(f"{c.name}: restart failed: {exc}; next try in {w.restart_at - now:.0f}s")
            return w
        if launched is None:  # `up` or `down` holds it right now, or `down` removed it: look again next tick
            return w
        record, spawned = launched
        if record is None:  # its pid is gone but something answers at its address
            w = restart_failed(w, now, self.backoff)
            self.out(f"{c.name}: something not started by intelbus answers at {c.address}; not started again "
                     f"(look again in {w.restart_at - now:.0f}s)")
            return w
        if not spawned:  # an `up` started it meanwhile
            self.out(f"{c.name}: running again (pid {record.pid}), started by someone else (`intelbus up`)")
            return Watch(restarts=w.restarts, crashes=w.crashes, running_since=now)
        self.out(f"{c.name}: restarted (pid {record.pid}, restart {w.restarts + 1})")
        return restarted(w, now)

    def _write_state(self) -> None:
        path = state_path(self.settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"components": {name: dataclasses.asdict(w) for name, w in self.watches.items()}}))
        tmp.replace(path)

    def run(self, interval: float | None = None) -> None:
        interval = self.interval if interval is None else interval
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self.out(f"supervisor: watching {', '.join(c.name for c in self.stack.components)} in {self.stack.pids.run_dir} "
                 f"(restart {'at once, then ' if self.backoff.immediate else ''}after {self.backoff.first_s:.0f}s "
                 f"doubling to {self.backoff.max_s:.0f}s; a look every {interval:g}s)")
        while not self.stopping:
            try:
                self.tick()
            except Exception as exc:  # one bad look must not end the supervision
                self.out(f"supervisor: {type(exc).__name__}: {exc}")
            deadline = time.monotonic() + interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)
        self.out("supervisor: stopped")


# --- started by `up`, stopped by `down` ----------------------------------------------------------

def settings_environ(settings: Settings) -> dict:
    """The INTELBUS_* variables that give a child process these settings."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def settings_path(settings: Settings) -> Path:
    return settings.stack_path / "run" / "supervisor.settings.json"


def changed_settings(running_with: dict | None, wanted: dict) -> list[str]:
    """The settings a running supervisor was started with that differ from wanted, as
    `NAME=old -> new` (values as `intelbus config` shows them); ["unknown"] when nothing was kept."""
    from ops.secrets import redact_setting

    if running_with is None:
        return ["unknown"]
    names = sorted(n for n in {*running_with, *wanted} if running_with.get(n) != wanted.get(n))
    return [f"{n}={redact_setting(running_with.get(n, '(unset)'))} -> {redact_setting(wanted.get(n, '(unset)'))}"
            for n in names]


def ensure_supervisor(settings: Settings, *, out=print) -> None:
    """Start the supervisor unless one runs for this stack with these settings.

    One that runs with other settings (an earlier `up` with other ports or another number of
    workers, another INTELBUS_STARTUP_TUNING) is replaced: it would restart components where this
    `up` does not look for them, or start them otherwise. What differs is said in one line."""
    from ops.processes import PidFiles, spawn, stop

    pids = PidFiles(settings.stack_path / "run")
    wanted = settings_environ(settings)
    with pids.lock(SUPERVISOR):
        record = pids.read(SUPERVISOR)
        if record is not None and record.alive():
            try:
                running_with = json.loads(settings_path(settings).read_text())
            except (OSError, ValueError):
                running_with = None
            if running_with == wanted:
                return
            changed = changed_settings(running_with, wanted)
            stop(record, timeout=60)
            shown = "; ".join(changed[:3]) + (f"; {len(changed) - 3} more" if len(changed) > 3 else "")
            out(f"{SUPERVISOR:<11} replaced (pid {record.pid} stopped): it ran with other settings ({shown})")
        marker = f"ops.cli supervise --stack-dir {settings.stack_path}"
        record = spawn(SUPERVISOR, [sys.executable, "-P", "-m", "ops.cli", "supervise", "--stack-dir", str(settings.stack_path)],
                       log=log_path(settings), marker=marker, env={**wanted, "PYTHONUNBUFFERED": "1"},
                       cwd=settings.stack_path)
        pids.write(record)
        settings_path(settings).write_text(json.dumps(wanted))
    out(f"{SUPERVISOR:<11} started (pid {record.pid}): restarts a crashed component with backoff, log {log_path(settings)}")


def stop_supervisor(settings: Settings, *, out=print) -> None:
    from ops.processes import PidFiles, stop

    pids = PidFiles(settings.stack_path / "run")
    with pids.lock(SUPERVISOR):
        record = pids.read(SUPERVISOR)
        if record is not None and stop(record, timeout=60):
            out(f"{SUPERVISOR:<11} stopped (pid {record.pid})")
        pids.remove(SUPERVISOR)
        state_path(settings).unlink(missing_ok=True)
        settings_path(settings).unlink(missing_ok=True)


def add_supervise(p):
    p.add_argument("--stack-dir", default=None, help="the stack to watch (default: INTELBUS_STACK_DIR); `up` passes it")
    p.epilog = ("Started by `intelbus up` in the background and stopped first by `intelbus down`; run it by hand\n"
                "only to watch its decisions in the foreground. `intelbus status` shows each component's restarts.")

    def run(args):
        settings = load_settings(**({"stack_dir": args.stack_dir} if args.stack_dir else {}))
        Supervisor(settings).run()
        return 0

    return run
