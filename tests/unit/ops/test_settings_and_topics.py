from __future__ import annotations

import pytest

from ops.settings import load_settings
from ops.topics import load_plan, parse_duration_ms


def test_defaults_point_at_the_local_stack():
    s = load_settings(environ={})
    assert s.kafka == "127.0.0.1:9092"
    assert s.registry_url == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert s.clickhouse_url.startswith("clickhouse://") and "127.0.0.1:9000" in s.clickhouse_url
    assert "@" not in s.clickhouse_url  # no user: each process adds its own (ops.secrets.clickhouse_url_as)


def test_environment_overrides_and_types():
    s = load_settings(environ={"INTELBUS_KAFKA": "k1:9092,k2:9092", "INTELBUS_PARTITIONS": "12", "INTELBUS_TOKEN_TTL_S": "600"})
    assert s.kafka == "k1:9092,k2:9092" and s.partitions == 12 and s.token_ttl_s == 600


def test_bad_environment_value_is_a_clear_error():
    with pytest.raises(SystemExit, match="INTELBUS_PARTITIONS='many' is not a valid int"):
        load_settings(environ={"INTELBUS_PARTITIONS": "many"})


def test_kafka_security_settings_are_passed_to_clients():
    s = load_settings(environ={"INTELBUS_KAFKA_AUTH": "none",
                               "INTELBUS_KAFKA_SECURITY": "security.protocol=SASL_SSL, sasl.mechanism=PLAIN"})
    assert s.kafka_config("anyone") == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL",
                                        "sasl.mechanism": "PLAIN"}


def test_every_setting_has_an_env_var_and_doc():
    for name, env, _, doc in load_settings(environ={}).describe():
        assert env.startswith("INTELBUS_") and doc, name


@pytest.mark.parametrize("text,ms", [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("12h", 43_200_000), ("14d", 1_209_600_000), ("forever", -1)])
def test_durations(text, ms):
    assert parse_duration_ms(text) == ms


def test_bad_duration():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("two weeks")


def test_topic_plan_declares_the_bus_topics_with_profiles():
    local = {t.name: t for t in load_plan(load_settings(environ={}))}
    for name in ("intel.alert", "intel.wanted", "intel.incident", "intel.hit", "intel.dlq",
                 "intel.alert.unique", "intel.wanted.unique", "intel.incident.unique"):
        assert name in local
        assert local[name].partitions == 6 and local[name].replication_factor == 1
    assert local["intel.incident"].config["retention.ms"] == str(14 * 86_400_000)
    prod = {t.name: t for t in load_plan(load_settings(environ={"INTELBUS_PROFILE": "production", "INTELBUS_PARTITIONS": "12"}))}
    assert prod["intel.hit"].replication_factor == 3 and prod["intel.hit"].config["min.insync.replicas"] == "2"
    assert prod["intel.hit"].partitions == 12


def test_unknown_profile_is_refused():
    with pytest.raises(SystemExit, match="unknown INTELBUS_PROFILE"):
        load_plan(load_settings(environ={"INTELBUS_PROFILE": "staging"}))


def test_cli_help_lists_every_command_with_one_line(capsys):
    from ops.cli import COMMANDS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, help_text, _ in COMMANDS:
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert line.strip().endswith(help_text)
