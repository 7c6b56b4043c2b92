"""The supervisor's decisions (ops/supervise.py), on a clock the test moves."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from ops.processes import PidFiles
from ops.supervise import DEAD, RUNNING, STOPPED, Backoff, Watch, decide, describe_exit, restart_failed, restarted

B = Backoff(first_s=1, factor=2, max_s=30, stable_s=60)
START = 90.0


def step(w, seen, now, healthy=None):
    return decide(w, seen, healthy, now, B, START)


def crash_and_restart(w, now):
    """A crash seen at `now`, then the restart when it is due; returns (delay waited, watch)."""
    action, w = step(w, DEAD, now)
    assert action == "crashed"
    delay = w.restart_at - now
    assert step(w, DEAD, now + delay - 0.01)[0] == "none"  # not before the backoff is over
    action, w = step(w, DEAD, now + delay)
    assert action == "restart"
    return delay, restarted(w, now + delay)


def test_backoff_doubles_from_one_second_to_at_most_thirty():
    assert [B.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_component_crashing_again_before_it_is_healthy_waits_longer_each_time():
    w, now, delays = Watch(running_since=0.0), 100.0, []
    for _ in range(7):
        delay, w = crash_and_restart(w, now)
        delays.append(delay)
        now += delay + 0.5  # dies again half a second after each restart, never healthy
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert w.restarts == 7


def test_after_a_minute_of_running_the_next_crash_waits_one_second_again():
    w = Watch(running_since=0.0)
    for now in (10.0, 20.0, 30.0):
        _, w = crash_and_restart(w, now)
        action, w = step(w, RUNNING, now + 5, healthy=True)
        assert action == "recovered"
    assert w.crashes == 3
    action, w = step(w, RUNNING, 35 + 59)  # 59 s after it was healthy: not yet stable
    assert w.crashes == 3
    action, w = step(w, RUNNING, 35 + 60)
    assert w.crashes == 0
    delay, w = crash_and_restart(w, 200.0)
    assert delay == 1 and w.restarts == 4


def test_stopped_on_purpose_is_not_restarted_and_keeps_its_count():
    _, w = crash_and_restart(Watch(), 10.0)
    # `down NAME` removed the pid file, even while a restart was pending
    _, w = step(w, DEAD, 20.0)
    action, w = step(w, STOPPED, 20.5)
    assert action == "none"
    for now in (21.0, 60.0, 600.0):
        action, w = step(w, STOPPED, now)
        assert action == "none"
    assert w.restarts == 1 and w.restart_at is None and w.crashes == 0


def test_never_started_components_are_left_alone():
    w = Watch()
    for now in range(0, 100, 10):
        action, w = step(w, STOPPED, float(now))
        assert action == "none"
    assert w == Watch()


def test_a_running_component_is_not_probed_or_touched():
    action, w = step(Watch(), RUNNING, 5.0)
    assert action == "none" and w.running_since == 5.0
    assert step(w, RUNNING, 500.0) == ("none", w)


def test_restarted_component_recovers_once_healthy_and_slow_start_is_said_once():
    _, w = crash_and_restart(Watch(), 0.0)  # restarted at t=1
    assert step(w, RUNNING, 2.0, healthy=False)[0] == "none"
    action, w = step(w, RUNNING, 1 + START + 1, healthy=False)
    assert action == "slow"
    action, w2 = step(w, RUNNING, 1 + START + 2, healthy=False)
    assert action == "none"
    action, w3 = step(w2, RUNNING, 1 + START + 3, healthy=True)
    assert action == "recovered" and w3.starting_since is None and w3.outage_since is None


def test_an_up_quicker_than_the_backoff_is_noticed_not_doubled():
    action, w = step(Watch(crashes=4, restarts=4), DEAD, 0.0)
    assert action == "crashed" and w.restart_at == 16.0
    action, w = step(w, RUNNING, 3.0)  # `intelbus up` started it at t=3
    assert action == "elsewhere" and w.restart_at is None and w.restarts == 4
    assert step(w, RUNNING, 20.0)[0] == "none"


def test_a_restart_that_cannot_be_made_backs_off():
    _, w = step(Watch(), DEAD, 0.0)
    w = restart_failed(w, 1.0, B)
    assert w.restart_at == 3.0 and w.restarts == 0
    assert step(w, DEAD, 2.9)[0] == "none" and step(w, DEAD, 3.0)[0] == "restart"


def test_exit_status_in_words():
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    killed.send_signal(signal.SIGKILL)
    _, status = os.waitpid(killed.pid, 0)
    assert describe_exit(status) == "killed by SIGKILL"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(70)"])
    _, status = os.waitpid(exited.pid, 0)
    assert describe_exit(status) == "exited with status 70"
    assert "unknown" in describe_exit(None)


def test_component_lock_refuses_a_second_holder(tmp_path):
    pids = PidFiles(tmp_path)
    with pids.lock("sink") as first:
        assert first
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from ops.processes import PidFiles\n"
             f"with PidFiles(Path({str(tmp_path)!r})).lock('sink', blocking=False) as got: sys.exit(0 if got else 3)"],
            cwd=os.getcwd())
        assert holder.returncode == 3
        with PidFiles(tmp_path).lock("jobs-0", blocking=False) as other:
            assert other  # one component's lock does not hold another's
    again = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from ops.processes import PidFiles\n"
         f"with PidFiles(Path({str(tmp_path)!r})).lock('sink', blocking=False) as got: sys.exit(0 if got else 3)"])
    assert again.returncode == 0


def test_a_process_whose_main_thread_died_is_not_gone_while_another_thread_runs(tmp_path):
    """What a SIGKILLed server looks like for a moment: its main thread a zombie, other threads
    still holding its ports and locks. Starting its successor then failed (ClickHouse: "Another
    server instance in same directory is already running")."""
    import time

    from ops.processes import spawn

    marker = f"intelbus-test-lingering-{tmp_path.name}"
    code = ("import ctypes, threading, time\n"
            "threading.Thread(target=time.sleep, args=(2.0,)).start()\n"
            "ctypes.CDLL(None).pthread_exit(None)\n")
    record = spawn("lingering", [sys.executable, "-c", code, marker], log=tmp_path / "l.log", marker=marker)
    deadline = time.monotonic() + 1.5
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not record.alive()  # the main thread is a zombie: `alive` calls it dead ...
    assert not record.gone()   # ... but a thread still runs
    started = time.monotonic()
    assert record.wait_gone(10)
    assert time.monotonic() - started > 0.5


def test_down_stops_the_supervisor_before_anything_else(tmp_path):
    from ops.processes import spawn
    from ops.settings import load_settings
    from ops.stack import Stack
    from ops.supervise import SUPERVISOR, ensure_supervisor

    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path)})
    pids = PidFiles(settings.stack_path / "run")
    said = []
    ensure_supervisor(settings, out=said.append)
    supervisor = pids.read(SUPERVISOR)
    assert supervisor.alive() and "started" in said[0]
    ensure_supervisor(settings, out=said.append)  # one per stack
    assert pids.read(SUPERVISOR).pid == supervisor.pid and len(said) == 1
    marker = f"intelbus-test-jobs-1-{tmp_path.name}"
    leftover = spawn("jobs-1", [sys.executable, "-c", "import time; time.sleep(120)", marker],
                     log=tmp_path / "jobs-1.log", marker=marker)
    pids.write(leftover)

    Stack(settings, components=[], out=said.append).down()

    assert not supervisor.alive() and not leftover.alive() and pids.names() == []
    assert said[1].startswith("supervisor") and "jobs-1" in said[2]


def test_supervisor_leaves_a_pid_file_its_settings_do_not_name(tmp_path):
    """jobs-1 of an `INTELBUS_JOBS_WORKERS=2 intelbus up`, dead, while the supervisor runs with one worker."""
    from ops.processes import PidRecord
    from ops.settings import load_settings
    from ops.supervise import Supervisor

    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_JOBS_WORKERS": "1"})
    pids = PidFiles(settings.stack_path / "run")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = PidRecord(name="jobs-1", pid=int(gone.stdout), started_at=0.0, marker="ops.cli jobs --worker-index 1", log="")
    pids.write(dead)
    said, now = [], [0.0]
    supervisor = Supervisor(settings, clock=lambda: now[0], out=said.append)
    for _ in range(40):
        supervisor.tick()
        now[0] += 1
    assert said == [] and pids.read("jobs-1") == dead and "jobs-1" not in supervisor.watches


def test_an_up_with_other_settings_replaces_the_supervisor(tmp_path):
    """A supervisor left by an `up` with other ports would restart components where this `up`
    does not look for them (and probe another stack's gateway)."""
    from ops.settings import load_settings
    from ops.stack import Stack
    from ops.supervise import SUPERVISOR, ensure_supervisor

    first = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_METRICS_PORT_BASE": "29400"})
    second = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_METRICS_PORT_BASE": "29500"})
    pids = PidFiles(first.stack_path / "run")
    said = []
    try:
        ensure_supervisor(first, out=said.append)
        old = pids.read(SUPERVISOR)
        ensure_supervisor(second, out=said.append)
        new = pids.read(SUPERVISOR)
        assert new.pid != old.pid and new.alive() and not old.alive()
        assert said[1].startswith("supervisor  replaced") and "INTELBUS_METRICS_PORT_BASE=29400 -> 29500" in said[1]
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # empty until the child has exec'd
            environ = Path(f"/proc/{new.pid}/environ").read_bytes().split(b"\0")
            if environ != [b""]:
                break
            time.sleep(0.05)
        assert b"INTELBUS_METRICS_PORT_BASE=29500" in environ
    finally:
        Stack(first, components=[], out=lambda m: None).down()


def test_a_down_in_progress_is_not_read_as_a_crash(tmp_path):
    """`down NAME` stops the process, then removes its pid file, holding NAME's lock throughout:
    in between, a dead process with a pid file must not look like a crash."""
    from ops.processes import PidRecord
    from ops.settings import load_settings
    from ops.supervise import Supervisor

    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path)})
    pids = PidFiles(settings.stack_path / "run")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pids.write(PidRecord(name="sink", pid=int(gone.stdout), started_at=0.0, marker="ops.cli sink", log=""))
    said, now = [], [0.0]
    supervisor = Supervisor(settings, clock=lambda: now[0], out=said.append)
    with pids.lock("sink"):  # what `down sink` holds while it stops the sink
        for _ in range(5):
            supervisor.tick()
            now[0] += 1
        pids.remove("sink")
    supervisor.tick()
    assert said == [] and pids.read("sink") is None


def test_status_says_when_a_crashed_component_is_started_again(tmp_path):
    """What `intelbus status` reads of the supervisor's state: restarts, and the next try of a crashed one."""
    from ops.components import ClickHouse
    from ops.processes import PidRecord
    from ops.settings import load_settings
    from ops.stack import Stack
    from ops.supervise import Supervisor

    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_CLICKHOUSE_HTTP": "http://127.0.0.1:9"})
    pids = PidFiles(settings.stack_path / "run")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pids.write(PidRecord(name="clickhouse", pid=int(gone.stdout), started_at=0.0, marker="config.xml", log=""))
    supervisor = Supervisor(settings, backoff=Backoff(first_s=16), out=lambda m: None)
    supervisor.watches["clickhouse"] = Watch(restarts=3, crashes=0)
    supervisor.tick()  # the crash is seen: the next try in 16 s
    [status] = Stack(settings, [ClickHouse("clickhouse", settings)]).status()
    assert status.restarts == 3 and not status.healthy
    assert 14 <= status.next_restart_in_s <= 16
    assert "restarted 3x" in status.line() and "starts it again in 1" in status.line()


def test_an_up_with_another_startup_tuning_replaces_the_supervisor_and_says_so(tmp_path):
    """INTELBUS_STARTUP_TUNING changes how the supervisor restarts (and the JVM flags it restarts them
    with): a supervisor started with another is replaced, in one line naming the change; an `up`
    with the same settings leaves it running."""
    import time

    from ops.settings import load_settings
    from ops.stack import Stack
    from ops.supervise import SUPERVISOR, ensure_supervisor, log_path

    tuned = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_STARTUP_TUNING": "all"})
    plain = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_STARTUP_TUNING": "none"})
    pids = PidFiles(tuned.stack_path / "run")
    said = []
    try:
        ensure_supervisor(tuned, out=said.append)
        old = pids.read(SUPERVISOR)
        ensure_supervisor(tuned, out=said.append)
        assert pids.read(SUPERVISOR).pid == old.pid and len(said) == 1  # same settings: left running
        ensure_supervisor(plain, out=said.append)
        new = pids.read(SUPERVISOR)
        assert new.pid != old.pid and new.alive() and not old.alive()
        assert said[1] == (f"supervisor  replaced (pid {old.pid} stopped): it ran with other settings "
                           "(INTELBUS_STARTUP_TUNING=all -> none)")
        deadline = time.monotonic() + 30
        while b"supervisor: watching" not in log_path(plain).read_bytes().split(b"--- ")[-1]:
            assert time.monotonic() < deadline, log_path(plain).read_text()[-2000:]
            time.sleep(0.1)
        # the new one restarts as `none` says: 1 s after a first crash, a look every second
        assert "(restart after 1s doubling to 30s; a look every 1s)" in log_path(plain).read_text().split("--- ")[-1]
    finally:
        Stack(tuned, components=[], out=lambda m: None).down()


def test_what_changed_is_named_with_passwords_hidden():
    from ops.supervise import changed_settings

    old = {"INTELBUS_STARTUP_TUNING": "all", "INTELBUS_CLICKHOUSE_URL": "clickhouse://u:secret@h:9000/db", "A": "1"}
    new = {"INTELBUS_STARTUP_TUNING": "none", "INTELBUS_CLICKHOUSE_URL": "clickhouse://u:other@h:9001/db", "A": "1"}
    lines = changed_settings(old, new)
    assert lines[1] == "INTELBUS_STARTUP_TUNING=all -> none" and "secret" not in lines[0] and "9001" in lines[0]
    assert changed_settings(old, old) == [] and changed_settings(None, new) == ["unknown"]
    assert changed_settings({}, {"B": "2"}) == ["B=(unset) -> 2"]


def test_the_exit_of_a_killed_child_stays_the_supervisors_to_collect_after_another_spawn(tmp_path):
    """A spawned process SIGKILLed, then another spawned (a restart of another component): the first's
    exit status is still there for the supervisor's waitpid. Dropped, its Popen went to subprocess's
    list, which the next Popen reaped: "exit status unknown" of a ClickHouse the supervisor started."""
    import os
    import signal
    import time

    from ops import processes
    from ops.supervise import describe_exit

    first = processes.spawn("a", ["sleep", "30"], log=tmp_path / "a.log", marker="m")
    os.kill(first.pid, signal.SIGKILL)
    time.sleep(0.2)  # a zombie now, its exit not collected
    second = processes.spawn("b", ["sleep", "30"], log=tmp_path / "b.log", marker="m")  # subprocess reaps its list here
    try:
        pid, status = os.waitpid(first.pid, os.WNOHANG)
        assert pid == first.pid and "SIGKILL" in describe_exit(status)
        processes.forget(first.pid)
        assert first.pid not in processes._SPAWNED and second.pid in processes._SPAWNED  # the control: still running
    finally:
        os.kill(second.pid, signal.SIGKILL)
        os.waitpid(second.pid, 0)
        processes.forget(second.pid)
