"""Credentials, one per principal: ClickHouse's users (and the server's users.xml) and Kafka's
SCRAM principals (ops/kafka_auth.py says who they are).

Who connects as whom:

    default           the operators' admin: migrations (`intelbus up`, `intelbus migrate`),
                      the tests' and benchmarks' direct checks
    intelbus_sink     the sink: inserts the history rows (database intelbus only)
    intelbus_gateway  the gateway: writes and reads the audit log (database intelbus only)
    intelbus_reader   the gateway runs people's scoped SELECTs as this user: readonly=1, so a
                      query that slipped through can neither write nor change a setting

A process gets its URL from `clickhouse_url_as(settings, user)`; the password comes from
the environment variable INTELBUS_CLICKHOUSE_PASSWORD_<USER> (production: set it from the
secret store) or else from the file <secrets dir>/clickhouse/<user> that `intelbus up`
writes when it is missing (`ensure_clickhouse_passwords`, called by `ClickHouse.prepare`).
Passwords are never settings, so `intelbus config` never prints one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from secrets import token_urlsafe
from urllib.parse import quote, urlsplit, urlunsplit

from ops.install import Missing

CLICKHOUSE_USERS = ("default", "intelbus_sink", "intelbus_gateway", "intelbus_reader")
TEMPLATE = Path(__file__).resolve().parent / "clickhouse" / "users.xml.in"


class MissingSecret(Missing):
    """A password is neither in the environment nor in the secrets directory; str() is one line."""


def _check_user(user: str) -> str:
    if user not in CLICKHOUSE_USERS:
        raise ValueError(f"unknown ClickHouse user {user!r} (known: {', '.join(CLICKHOUSE_USERS)})")
    return user


def password_env_var(user: str) -> str:
    """INTELBUS_CLICKHOUSE_PASSWORD_INTELBUS_SINK for intelbus_sink."""
    return "INTELBUS_CLICKHOUSE_PASSWORD_" + _check_user(user).upper()


def clickhouse_secrets_dir(settings) -> Path:
    return Path(settings.secrets_dir) / "clickhouse"


def secret_path(settings, user: str) -> Path:
    return clickhouse_secrets_dir(settings) / _check_user(user)


def clickhouse_password(settings, user: str, *, environ=None) -> str:
    """The user's password: its environment variable, else its file; MissingSecret if neither."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(password_env_var(user))
    if from_env:
        return from_env
    path = secret_path(settings, user)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if not text:
        raise MissingSecret(
            f"no ClickHouse password for {user}: run `intelbus up` (creates {_shown(settings.secrets_dir)}) "
            f"or set {password_env_var(user)}")
    return text


def _shown(path: str) -> str:
    """.stack/secrets rather than /abs/path/to/repo/.stack/secrets, when it is under the working directory."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def ensure_clickhouse_passwords(settings, *, environ=None) -> dict[str, str]:
    """Every user's password; a user with neither a variable nor a file gets a new file.

    The directory is made (or tightened to) 0700 and each file 0600. Existing files and
    variables are kept, so running it twice gives the same passwords.
    """
    environ = os.environ if environ is None else environ
    folder = clickhouse_secrets_dir(settings)
    for d in (folder.parent, folder):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    passwords = {}
    for user in CLICKHOUSE_USERS:
        path = secret_path(settings, user)
        if not environ.get(password_env_var(user)) and not (path.exists() and path.read_text(encoding="utf-8").strip()):
            _write_private(path, token_urlsafe(24) + "\n")
        if path.exists():
            os.chmod(path, 0o600)
        passwords[user] = clickhouse_password(settings, user, environ=environ)
    return passwords


def _write_private(path: Path, text: str) -> None:
    """Write a file that is 0600 from its first byte (never briefly readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sha256_hex(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def render_users_xml(passwords: dict[str, str], template: Path = TEMPLATE) -> str:
    """users.xml for the local server: the template with each user's sha256 (same passwords, same text)."""
    text = template.read_text(encoding="utf-8")
    for user in CLICKHOUSE_USERS:
        text = text.replace(f"@SHA256_{user.upper()}@", sha256_hex(passwords[user]))
    if "@SHA256_" in text:
        raise ValueError(f"{template}: a placeholder is left after rendering")
    return text


def clickhouse_url_as(settings, user: str, *, environ=None) -> str:
    """settings.clickhouse_url with this user and its (url-quoted) password, for clickhouse-driver.

    A user or password already in the URL is replaced: each process connects as its own user.
    """
    password = clickhouse_password(settings, user, environ=environ)
    parts = urlsplit(settings.clickhouse_url)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***, for logs and `intelbus config`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


def redact_setting(value):
    """A setting's value as `intelbus config` prints it: URL passwords and Kafka's *password=... hidden."""
    if not isinstance(value, str):
        return value
    if "://" in value:
        return redact_url(value)
    if "password=" in value:  # librdkafka's sasl.password=..., ssl.key.password=...
        items = (item.partition("=") for item in value.split(","))
        return ",".join(f"{k}=***" if "password" in k else f"{k}{sep}{v}" for k, sep, v in items)
    return value


GRANTS = TEMPLATE.parent / "grants.sql"


def render_grants_sql(passwords: dict[str, str], template: Path = GRANTS) -> str:
    """ops/clickhouse/grants.sql with each service user's sha256 filled in (for a current ClickHouse)."""
    text = template.read_text(encoding="utf-8")
    for user in CLICKHOUSE_USERS:
        if user in passwords:
            text = text.replace(f"'@SHA256_{user.upper()}@'", f"'{sha256_hex(passwords[user])}'")
    if "'@SHA256_" in text:
        raise MissingSecret("grants.sql: no password for a service user (set INTELBUS_CLICKHOUSE_PASSWORD_<USER>)")
    return text


# Kafka: every principal named in ops/acls.yaml, plus the admin. Same rules as ClickHouse's:
# INTELBUS_KAFKA_PASSWORD_<USER> (dashes as underscores) first, else <secrets dir>/kafka/<user>.

def kafka_password_env_var(user: str) -> str:
    """INTELBUS_KAFKA_PASSWORD_INTELBUS_JOBS for intelbus-jobs."""
    if not user or not all(c.isalnum() or c in "-_." for c in user):
        raise ValueError(f"not a Kafka principal name: {user!r} (letters, digits, '-', '_', '.')")
    return "INTELBUS_KAFKA_PASSWORD_" + user.upper().replace("-", "_").replace(".", "_")


def kafka_secret_path(settings, user: str) -> Path:
    kafka_password_env_var(user)  # validates the name: it becomes a file name
    return Path(settings.secrets_dir) / "kafka" / user


def kafka_password(settings, user: str, *, environ=None) -> str:
    """The Kafka principal's password: its environment variable, else its file; MissingSecret if neither."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(kafka_password_env_var(user))
    if from_env:
        return from_env
    try:
        text = kafka_secret_path(settings, user).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if not text:
        raise MissingSecret(
            f"no Kafka password for principal {user}: run `intelbus up` (creates {_shown(settings.secrets_dir)}/kafka/{user}) "
            f"or set {kafka_password_env_var(user)}")
    return text


def ensure_kafka_passwords(settings, users, *, environ=None) -> dict[str, str]:
    """Each user's password; a user with neither a variable nor a file gets a new 0600 file (idempotent)."""
    environ = os.environ if environ is None else environ
    folder = Path(settings.secrets_dir) / "kafka"
    for d in (folder.parent, folder):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    passwords = {}
    for user in users:
        path = kafka_secret_path(settings, user)
        if not environ.get(kafka_password_env_var(user)) and not (path.exists() and path.read_text(encoding="utf-8").strip()):
            _write_private(path, token_urlsafe(24) + "\n")
        if path.exists():
            os.chmod(path, 0o600)
        passwords[user] = kafka_password(settings, user, environ=environ)
    return passwords


def main(argv=None) -> int:
    """`python -m ops.secrets grants`: grants.sql for these passwords (environment first, then the files)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv != ["grants"]:
        print("usage: python -m ops.secrets grants   (prints ops/clickhouse/grants.sql with the services' password hashes)",
              file=sys.stderr)
        return 2
    from ops.settings import load_settings

    settings = load_settings()
    try:
        passwords = {u: clickhouse_password(settings, u) for u in CLICKHOUSE_USERS if u != "default"}
    except MissingSecret as exc:
        print(f"python -m ops.secrets: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_grants_sql(passwords))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
