"""Who each client is on the broker, and ops/acls.yaml as rules (no broker here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.acls import ACLS_FILE, AclFileError, Binding, diff, load_acls
from ops.kafka_auth import ADMIN, SERVICES, client_config, faust_credentials
from ops.secrets import MissingSecret, ensure_kafka_passwords, kafka_password_env_var
from ops.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={}, stack_dir=str(tmp_path / "stack"))


def test_each_client_connects_as_its_own_principal_with_its_own_password(settings):
    passwords = ensure_kafka_passwords(settings, [ADMIN, "intelbus-jobs"], environ={})
    conf = client_config(settings, "intelbus-jobs")
    assert conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "intelbus-jobs" and conf["sasl.password"] == passwords["intelbus-jobs"]
    assert passwords["intelbus-jobs"] != passwords[ADMIN]
    folder = Path(settings.secrets_dir) / "kafka"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "intelbus-jobs").stat().st_mode & 0o777) == "0o600"
    # idempotent: the same passwords the second time
    assert ensure_kafka_passwords(settings, [ADMIN, "intelbus-jobs"], environ={}) == passwords


def test_a_missing_password_names_the_variable_and_the_command(settings):
    with pytest.raises(MissingSecret, match="no Kafka password for principal hb-system: run `intelbus up`.*"
                                            "INTELBUS_KAFKA_PASSWORD_HB_SYSTEM"):
        client_config(settings, "hb-system")


def test_the_environment_wins_over_the_file_and_tls_settings_apply_last(tmp_path):
    s = load_settings(environ={"INTELBUS_KAFKA_SECURITY": "security.protocol=SASL_SSL,ssl.ca.location=/etc/ca.pem"},
                      stack_dir=str(tmp_path))
    os.environ[kafka_password_env_var("hb-system")] = "from-the-vault"
    try:
        conf = client_config(s, "hb-system")
    finally:
        del os.environ[kafka_password_env_var("hb-system")]
    assert conf["sasl.password"] == "from-the-vault"
    assert conf["security.protocol"] == "SASL_SSL" and conf["ssl.ca.location"] == "/etc/ca.pem"


def test_without_auth_clients_send_no_credentials(tmp_path):
    s = load_settings(environ={"INTELBUS_KAFKA_AUTH": "none"}, stack_dir=str(tmp_path))
    assert client_config(s, ADMIN) == {"bootstrap.servers": "127.0.0.1:9092"}
    assert faust_credentials(s, ADMIN) is None
    with pytest.raises(ValueError, match="INTELBUS_KAFKA_AUTH='kerberos'"):
        client_config(load_settings(environ={"INTELBUS_KAFKA_AUTH": "kerberos"}), ADMIN)


def test_faust_gets_the_same_identity(settings):
    ensure_kafka_passwords(settings, ["intelbus-jobs"], environ={})
    creds = faust_credentials(settings, "intelbus-jobs")
    assert creds.username == "intelbus-jobs" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.ssl_context is None


def test_secrets_are_never_printed_by_config(tmp_path):
    s = load_settings(environ={"INTELBUS_KAFKA_SECURITY": "security.protocol=SASL_SSL,sasl.password=hunter2"},
                      stack_dir=str(tmp_path))
    printed = repr(s.describe())
    assert "hunter2" not in printed and "sasl.password=***" in printed


def test_the_shipped_file_gives_each_principal_only_what_it_needs():
    plan = load_acls(ACLS_FILE)
    assert {"intelbus-jobs", "intelbus-sink", "intelbus-gateway", "local"} <= set(plan.principals)
    assert ADMIN not in plan.principals  # the super user needs no rule
    by = {}
    for b in plan.bindings:
        by.setdefault(b.principal, set()).add((b.resource, b.name, b.pattern, b.operation))
    local = by["User:local"]
    # a regional system writes the input topics (and its own dead letters) and reads nothing
    assert ("TOPIC", "intel.incident", "LITERAL", "WRITE") in local
    assert not any(op == "READ" for _, _, _, op in local)
    assert not any(name == "intel.hit" for _, name, _, _ in local)
    assert not any(res == "GROUP" for res, _, _, _ in local)
    # the gateway reads hits and shared alerts, and writes what a publisher may (its ingest) and the
    # people's workflow commands
    assert ("TOPIC", "intel.hit", "LITERAL", "READ") in by["User:intelbus-gateway"]
    assert {name for _, name, _, op in by["User:intelbus-gateway"] if op == "WRITE"} == \
        {name for _, name, _, op in local if op == "WRITE"} | {"intel.workflow.commands"}
    # only the gateway writes workflow commands, only the jobs write the transitions
    assert {b.principal for b in plan.bindings if b.name == "intel.workflow.commands" and b.operation == "WRITE"} \
        == {"User:intelbus-gateway"}
    assert {b.principal for b in plan.bindings if b.name == "intel.workflow" and b.operation == "WRITE"} \
        == {"User:intelbus-jobs"}
    # only the jobs write hits
    writers = {b.principal for b in plan.bindings if b.name == "intel.hit" and b.operation == "WRITE"}
    assert writers == {"User:intelbus-jobs"}
    assert set(SERVICES) - {ADMIN} <= set(plan.principals)


def test_rules_expand_per_name_and_operation():
    plan = load_acls(text="""
roles:
  r: [{topic: [a, b], operations: [READ, describe]}, {group_prefix: g-, operations: [READ]}]
principals:
  p: [r]
""")
    assert plan.bindings == {Binding("User:p", "TOPIC", "a", "LITERAL", "READ"),
                             Binding("User:p", "TOPIC", "a", "LITERAL", "DESCRIBE"),
                             Binding("User:p", "TOPIC", "b", "LITERAL", "READ"),
                             Binding("User:p", "TOPIC", "b", "LITERAL", "DESCRIBE"),
                             Binding("User:p", "GROUP", "g-", "PREFIXED", "READ")}


@pytest.mark.parametrize("text,message", [
    ("roles: {r: [{topic: a, operations: [READD]}]}\nprincipals: {p: [r]}", r"roles.r\[0\]: unknown operation 'READD'"),
    ("roles: {r: [{topic: a, group: g, operations: [READ]}]}\nprincipals: {p: [r]}", r"roles.r\[0\]: name exactly one resource"),
    ("roles: {r: [{topics: a, operations: [READ]}]}\nprincipals: {p: [r]}", r"roles.r\[0\]: unknown key 'topics'"),
    ("roles: {r: [{topic: a, operations: [READ]}]}\nprincipals: {p: [w]}", r"principals.p: unknown role 'w'"),
    ("roles: {r: [{topic: a}]}\nprincipals: {p: [r]}", r"roles.r\[0\]: operations: give a list"),
])
def test_a_wrong_file_is_refused_with_the_place(text, message):
    with pytest.raises(AclFileError, match=message):
        load_acls(text=text)


def test_diff_gives_what_is_missing_and_what_is_not_declared():
    a = Binding("User:p", "TOPIC", "a", "LITERAL", "READ")
    b = Binding("User:p", "TOPIC", "b", "LITERAL", "READ")
    c = Binding("User:x", "TOPIC", "intel.hit", "LITERAL", "READ")
    assert diff(frozenset({a, b}), {b, c}) == ([a], [c])
    assert diff(frozenset({a}), {a}) == ([], [])


class _Broker:
    """What apply_acls asks of an AdminClient, over in-memory rules and credentials (unit tests only)."""

    def __init__(self, bindings=(), users=()):
        self.bindings, self.users, self.calls = set(bindings), set(users), []

    def __getattr__(self, name):
        raise AssertionError(f"apply_acls called {name}")


def test_a_dry_run_says_what_apply_would_create_and_changes_nothing(tmp_path, monkeypatch):
    import ops.acls as acls
    import ops.kafka_auth as kafka_auth

    s = load_settings(environ={}, stack_dir=str(tmp_path))
    ensure_kafka_passwords(s, ["p"], environ={})
    plan = load_acls(text="roles: {r: [{topic: a, operations: [READ]}]}\nprincipals: {p: [r], q: [r]}")
    broker = _Broker()
    monkeypatch.setattr(acls, "broker_bindings", lambda admin, timeout: set(admin.bindings))
    monkeypatch.setattr(kafka_auth, "existing_scram_users", lambda admin, names, timeout: set(admin.users) & set(names))
    report = acls.apply_acls(broker, s, plan, dry_run=True)
    assert report.created == sorted(plan.bindings) and report.credentials_created == ["p"]
    assert report.credentials_missing == ["q"]  # no password here for q: apply would say so too
    assert broker.bindings == set() and broker.users == set()  # nothing changed (any other call would fail)
