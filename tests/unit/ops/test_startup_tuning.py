"""What makes a killed component come back sooner (issue 18): the supervisor's first restart at once,
the JVMs' class-data archive (written at a clean exit), the single broker's shorter session; each can be turned off
(INTELBUS_STARTUP_TUNING) for bench/bench_recovery.py's before/after."""
import subprocess
import sys
from dataclasses import replace

import pytest

from ops.components import Kafka, Registry, infrastructure, startup_tunings
from ops.install import Java
from ops.processes import PidFiles, PidRecord
from ops.settings import load_settings
from ops.supervise import Backoff, restarted


def test_tunings_default_to_all_and_refuse_an_unknown_name():
    assert startup_tunings({}) == {"restart", "cds", "kafka"}  # c1 costs the running broker CPU: opt-in
    assert startup_tunings({"INTELBUS_STARTUP_TUNING": "all"}) == {"restart", "cds", "kafka", "c1"}
    assert startup_tunings({"INTELBUS_STARTUP_TUNING": "none"}) == frozenset()
    assert startup_tunings({"INTELBUS_STARTUP_TUNING": "restart, kafka"}) == {"restart", "kafka"}
    with pytest.raises(ValueError, match="unknown cdss"):
        startup_tunings({"INTELBUS_STARTUP_TUNING": "cdss"})


def test_the_first_restart_is_immediate_then_the_backoff_doubles():
    assert [Backoff(immediate=1).delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert [Backoff().delay(n) for n in range(1, 4)] == [1, 2, 4]  # as before, without the tuning


def _tuned(component, tuning: str):
    """component with its settings' INTELBUS_STARTUP_TUNING set to tuning (what `up` gives it)."""
    component.settings = replace(component.settings, startup_tuning=tuning)
    return component


def _dead_sink(tmp_path, tuning: str = "all"):
    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_STARTUP_TUNING": tuning})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    PidFiles(settings.stack_path / "run").write(PidRecord(name="sink", pid=int(gone.stdout), started_at=0.0,
                                                          marker="ops.cli sink", log=""))
    return settings


def _supervisor(settings, now):
    from ops.supervise import Supervisor

    supervisor = Supervisor(settings, clock=lambda: now[0], out=lambda m: None)
    calls = []

    def fake_restart(c, w, at):
        calls.append((c.name, at))
        return restarted(w, at)

    supervisor._restart = fake_restart
    return supervisor, calls


def test_a_crash_is_restarted_in_the_tick_that_sees_it(tmp_path, monkeypatch):
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    now = [100.0]
    supervisor, calls = _supervisor(_dead_sink(tmp_path), now)
    assert supervisor.interval == 0.5
    supervisor.tick()
    assert calls == [("sink", 100.0)]


def test_without_the_restart_tuning_the_first_restart_waits_a_second(tmp_path, monkeypatch):
    now = [100.0]
    supervisor, calls = _supervisor(_dead_sink(tmp_path, "cds,kafka,c1"), now)
    assert supervisor.interval == 1.0
    supervisor.tick()
    now[0] = 100.9
    supervisor.tick()
    assert calls == []
    now[0] = 101.0
    supervisor.tick()
    assert calls == [("sink", 101.0)]


def test_the_single_broker_gives_a_killed_incarnation_4_s_not_9(tmp_path, monkeypatch):
    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path)})
    kafka = infrastructure(settings)[0]
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    lines = kafka.server_properties("pw").splitlines()
    assert "broker.session.timeout.ms=4000" in lines and "broker.heartbeat.interval.ms=1000" in lines
    assert "num.recovery.threads.per.data.dir=2" in lines
    _tuned(kafka, "none")
    assert not any(line.startswith(("broker.session", "num.recovery")) for line in kafka.server_properties("pw").splitlines())


def test_cluster_brokers_keep_kafkas_session(tmp_path, monkeypatch):
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path), "INTELBUS_STACK_PROFILE": "cluster",
                              "INTELBUS_KAFKA": "127.0.0.1:59092"})
    for broker in infrastructure(settings)[:3]:
        lines = broker.server_properties("pw").splitlines()
        assert "num.recovery.threads.per.data.dir=2" in lines
        assert not any(line.startswith("broker.session") for line in lines)


def _kafka_with_libs(tmp_path):
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "kafka_2.13-3.9.1.jar").write_bytes(b"jar")
    kafka = Kafka("kafka", load_settings({"INTELBUS_STACK_DIR": str(tmp_path / "stack")}))
    kafka.java, kafka.classpath = Java("/usr/bin/java", 17), f"{libs}/*"
    return kafka, libs


def test_a_jvm_archives_its_classes_at_a_clean_exit_then_maps_them(tmp_path, monkeypatch):
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    kafka, _ = _kafka_with_libs(tmp_path)
    archive = kafka.cds_archive()
    assert f"-XX:ArchiveClassesAtExit={archive}" in kafka.cds_flags()  # JDK 17: written when it exits
    archive.write_bytes(b"archive")
    assert kafka.cds_flags() == [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto"]
    _tuned(kafka, "restart,kafka")
    assert kafka.cds_flags() == []


def test_a_jdk_from_19_on_makes_and_remakes_its_archive_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    kafka, _ = _kafka_with_libs(tmp_path)
    kafka.java = Java("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java", 25)
    flags = kafka.cds_flags()
    assert f"-XX:SharedArchiveFile={kafka.cds_archive()}" in flags and "-XX:+AutoCreateSharedArchive" in flags


def test_a_new_jar_or_jdk_means_a_new_archive(tmp_path):
    kafka, libs = _kafka_with_libs(tmp_path)
    first = kafka.cds_archive()
    (libs / "kafka_2.13-3.9.1.jar").write_bytes(b"another build")
    assert kafka.cds_archive() != first
    second = kafka.cds_archive()
    kafka.java = Java("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java", 25)
    assert kafka.cds_archive() != second


def test_the_brokers_compile_with_c1_only_when_tuned(tmp_path, monkeypatch):
    kafka, _ = _kafka_with_libs(tmp_path)
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    assert "-XX:TieredStopAtLevel=1" not in kafka.command()[0]  # by default C2: the running broker's CPU
    _tuned(kafka, "all")
    assert "-XX:TieredStopAtLevel=1" in kafka.command()[0]
    _tuned(kafka, "none")
    argv = kafka.command()[0]
    assert "-XX:TieredStopAtLevel=1" not in argv and not any("Shared" in a or "Archive" in a for a in argv)


def test_the_registry_archive_follows_its_application(tmp_path, monkeypatch):
    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    registry = Registry("registry", load_settings({"INTELBUS_STACK_DIR": str(tmp_path)}))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "quarkus-run.jar").write_bytes(b"jar")
    registry.app, registry.java = tmp_path / "app", Java("/usr/bin/java", 25)
    registry.classpath = str(registry.app / "quarkus-run.jar")
    argv, _ = registry.command()
    assert "-XX:+AutoCreateSharedArchive" in argv and argv.index("-XX:+AutoCreateSharedArchive") < argv.index("-jar")
    assert f"-XX:SharedArchiveFile={registry.cds_archive()}" in argv


def test_the_tuning_comes_from_the_settings_not_from_this_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("INTELBUS_STARTUP_TUNING", "none")  # a shell's leftover: the settings given win
    kafka, _ = _kafka_with_libs(tmp_path)
    assert kafka.settings.startup_tuning == "restart,cds,kafka"
    assert any("ArchiveClassesAtExit" in a or "SharedArchiveFile" in a for a in kafka.command()[0])  # cds: not "none"
    assert startup_tunings() == frozenset()  # no settings given: this process's, from its environment


def test_the_cluster_profiles_brokers_compile_with_c1_by_default_and_the_single_broker_with_c2(tmp_path, monkeypatch):
    # three JVM brokers on the same small machine at low rates: a killed one must be back within 30 s
    from ops.components import KafkaNode

    monkeypatch.delenv("INTELBUS_STARTUP_TUNING", raising=False)
    single, libs = _kafka_with_libs(tmp_path)
    node = KafkaNode("kafka-2", single.settings)
    node.java, node.classpath = single.java, single.classpath
    assert "-XX:TieredStopAtLevel=1" in node.command()[0]
    assert "-XX:TieredStopAtLevel=1" not in single.command()[0]
    _tuned(node, "none")  # bench_recovery's "before": nothing tuned
    assert "-XX:TieredStopAtLevel=1" not in node.command()[0]
