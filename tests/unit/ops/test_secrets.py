"""ops/secrets.py: ClickHouse passwords per user, made by `intelbus up`, never printed."""
from __future__ import annotations

import stat
from urllib.parse import unquote, urlsplit

import pytest

from ops.secrets import (CLICKHOUSE_USERS, MissingSecret, clickhouse_password, clickhouse_url_as,
                         ensure_clickhouse_passwords, redact_setting, render_users_xml, secret_path, sha256_hex)
from ops.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path / "stack")})


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_dir_follows_the_stack_dir_unless_set(tmp_path):
    assert load_settings(environ={"INTELBUS_STACK_DIR": "/srv/s"}).secrets_dir == "/srv/s/secrets"
    assert load_settings(environ={"INTELBUS_STACK_DIR": "/srv/s", "INTELBUS_SECRETS_DIR": "/etc/ib"}).secrets_dir == "/etc/ib"


def test_up_generates_one_private_file_per_user(settings):
    passwords = ensure_clickhouse_passwords(settings, environ={})
    assert sorted(passwords) == sorted(CLICKHOUSE_USERS)
    assert len(set(passwords.values())) == len(CLICKHOUSE_USERS)          # each user its own
    assert all(len(p) >= 32 for p in passwords.values())                   # token_urlsafe(24): 32 characters
    folder = secret_path(settings, "default").parent
    assert mode(folder) == 0o700 and mode(folder.parent) == 0o700
    for user in CLICKHOUSE_USERS:
        path = secret_path(settings, user)
        assert path == folder / user and mode(path) == 0o600
        assert path.read_text().strip() == passwords[user]
    assert sorted(p.name for p in folder.iterdir()) == sorted(CLICKHOUSE_USERS)  # no temporary file left


def test_generation_is_idempotent_and_tightens_modes(settings):
    first = ensure_clickhouse_passwords(settings, environ={})
    sink = secret_path(settings, "intelbus_sink")
    sink.chmod(0o644)
    sink.parent.chmod(0o755)
    assert ensure_clickhouse_passwords(settings, environ={}) == first
    assert mode(sink) == 0o600 and mode(sink.parent) == 0o700
    assert render_users_xml(first) == render_users_xml(ensure_clickhouse_passwords(settings, environ={}))


def test_a_lost_file_is_regenerated_alone(settings):
    first = ensure_clickhouse_passwords(settings, environ={})
    secret_path(settings, "intelbus_reader").unlink()
    second = ensure_clickhouse_passwords(settings, environ={})
    assert second["intelbus_reader"] != first["intelbus_reader"]
    assert {u: p for u, p in second.items() if u != "intelbus_reader"} == {u: p for u, p in first.items() if u != "intelbus_reader"}


def test_environment_overrides_the_file_and_no_file_is_written_for_it(settings):
    env = {"INTELBUS_CLICKHOUSE_PASSWORD_INTELBUS_SINK": "from-the-vault"}
    passwords = ensure_clickhouse_passwords(settings, environ=env)
    assert passwords["intelbus_sink"] == "from-the-vault"
    assert not secret_path(settings, "intelbus_sink").exists()
    assert clickhouse_password(settings, "intelbus_sink", environ=env) == "from-the-vault"
    assert clickhouse_password(settings, "default", environ=env) == passwords["default"]


def test_a_missing_secret_is_one_line_naming_the_fix(settings):
    with pytest.raises(MissingSecret) as err:
        clickhouse_password(settings, "intelbus_sink", environ={})
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("no ClickHouse password for intelbus_sink: run `intelbus up` (creates ")
    assert text.endswith("secrets) or set INTELBUS_CLICKHOUSE_PASSWORD_INTELBUS_SINK")
    with pytest.raises(MissingSecret):
        clickhouse_url_as(settings, "intelbus_sink", environ={})


def test_unknown_user_is_refused(settings):
    with pytest.raises(ValueError, match="unknown ClickHouse user 'analyst'"):
        clickhouse_password(settings, "analyst", environ={})


def test_users_xml_holds_hashes_not_passwords(settings):
    passwords = ensure_clickhouse_passwords(settings, environ={})
    xml = render_users_xml(passwords)
    for user, password in passwords.items():
        assert password not in xml
        assert f"<password_sha256_hex>{sha256_hex(password)}</password_sha256_hex>" in xml
        assert f"<{user}>" in xml
    assert "@" not in xml.split("-->", 2)[-1]          # every placeholder rendered
    assert "<password></password>" not in xml          # no user without a password


def test_url_as_each_user_with_a_quoted_password(tmp_path):
    s = load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path),
                               "INTELBUS_CLICKHOUSE_URL": "clickhouse://ops:old@ch.example:9440/intelbus?secure=True"})
    env = {"INTELBUS_CLICKHOUSE_PASSWORD_INTELBUS_READER": "a/b@c:d%e"}
    url = clickhouse_url_as(s, "intelbus_reader", environ=env)
    parts = urlsplit(url)
    assert parts.username == "intelbus_reader" and unquote(parts.password) == "a/b@c:d%e"
    assert (parts.hostname, parts.port, parts.path, parts.query) == ("ch.example", 9440, "/intelbus", "secure=True")
    from clickhouse_driver.util.helpers import parse_url

    host, kwargs = parse_url(url)
    assert host == "ch.example" and kwargs["user"] == "intelbus_reader" and kwargs["password"] == "a/b@c:d%e"


def test_default_url_names_no_user():
    assert load_settings(environ={}).clickhouse_url == "clickhouse://127.0.0.1:9000/intelbus"


def test_config_prints_no_password(tmp_path):
    s = load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path),
                               "INTELBUS_CLICKHOUSE_URL": "clickhouse://ops:s3cret@ch:9000/intelbus",
                               "INTELBUS_KAFKA_SECURITY": "security.protocol=SASL_SSL,sasl.username=r1,sasl.password=k4fka"})
    passwords = ensure_clickhouse_passwords(s, environ={})
    printed = " ".join(str(value) for _, _, value, _ in s.describe())
    for secret in ("s3cret", "k4fka", *passwords.values()):
        assert secret not in printed
    values = {name: value for name, _, value, _ in s.describe()}
    assert values["clickhouse_url"] == "clickhouse://ops:***@ch:9000/intelbus"
    assert values["kafka_security"] == "security.protocol=SASL_SSL,sasl.username=r1,sasl.password=***"
    assert values["secrets_dir"] == str(tmp_path / "secrets")
    assert redact_setting(6) == 6 and redact_setting("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
