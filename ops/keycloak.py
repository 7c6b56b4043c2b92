"""A local Keycloak for the OIDC tests and the demo: a real provider, not a stand-in.

`start()` runs Keycloak's `start-dev` on 127.0.0.1:8180 with the realm in
ops/keycloak/intelbus-realm.json imported (realm `intelbus`, client `intelbus-cli`, three demo
users; every password in it is a test value). It is not part of `intelbus up`: the main stack
does not need it, and it must not be stopped by `intelbus down` either, so its pid file lives
in its own home, not in <stack>/run.

Layout: the Keycloak distribution stays where `install.fetch_keycloak` unpacked it; the
Keycloak *home* is <stack>/keycloak, holding a copy of bin/kc.sh (which takes its home from
its own location), links to the distribution's lib/, conf/, themes/ and providers/, and a real
data/ (the H2 database and data/import/). So everything Keycloak writes at run time is under
the stack directory, and `intelbus down --purge` removes it.

    python -m ops.keycloak start|stop|status
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ops import install
from ops.install import Missing
from ops.processes import PidFiles, PidRecord, port_open, port_owner, spawn, stop as stop_process
from ops.settings import REPO_ROOT, Settings, load_settings

HOST = "127.0.0.1"
PORT = 8180
# Quarkus puts the management interface on port 9000 by default -- ClickHouse's native port
# here. Nothing is exposed on it (health and metrics are off), but the port is moved anyway so
# turning health on later cannot collide.
MANAGEMENT_PORT = 8190
REALM = "intelbus"
REALM_FILE = REPO_ROOT / "ops" / "keycloak" / "intelbus-realm.json"
# Test-only bootstrap administrator of the master realm; override for a shared demo machine.
ADMIN_USER = os.environ.get("INTELBUS_KEYCLOAK_ADMIN", "admin")
ADMIN_PASSWORD = os.environ.get("INTELBUS_KEYCLOAK_ADMIN_PASSWORD", "test-only-admin")
START_TIMEOUT = 300.0  # first start on 2 cores re-augments Quarkus and imports the realm
NAME = "keycloak"


@dataclass(frozen=True)
class Keycloak:
    """A running local Keycloak: where it answers and what started it."""

    base_url: str
    realm: str
    pid: int | None  # None when it was already answering and not started by us
    log: Path
    started_in_s: float | None  # seconds from spawn to ready; None if reused

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"


def home_dir(settings: Settings) -> Path:
    return settings.stack_path / "keycloak"


def log_path(settings: Settings) -> Path:
    return settings.stack_path / "logs" / "keycloak.log"


def base_url() -> str:
    return f"http://{HOST}:{PORT}"


def _pids(settings: Settings) -> PidFiles:
    # in the Keycloak home, not <stack>/run: `intelbus down` stops every pid file it finds there
    return PidFiles(home_dir(settings))


def realm_ready(timeout: float = 2.0) -> bool:
    """True once the intelbus realm answers its discovery document with the expected issuer."""
    url = f"{base_url()}/realms/{REALM}/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200 and json.load(resp).get("issuer") == f"{base_url()}/realms/{REALM}"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.symlink_to(target)


def prepare_home(app: Path, home: Path) -> None:
    """The Keycloak home under the stack: kc.sh copied, the distribution linked, data/ real.

    The realm file is copied into data/import/ at every start. Keycloak's --import-realm skips
    a realm that already exists, so when the file changed since the database was made the
    database is dropped (it holds only this test realm and the bootstrap admin) and the
    realm imported afresh: the file stays the truth.
    """
    (home / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(app / "bin" / "kc.sh", home / "bin" / "kc.sh")
    for sub in ("lib", "conf", "themes", "providers"):
        _link(home / sub, app / sub)
    import_dir = home / "data" / "import"
    import_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(REALM_FILE.read_bytes()).hexdigest()
    stamp = home / "realm.sha256"
    if stamp.exists() and stamp.read_text() != digest:
        shutil.rmtree(home / "data" / "h2", ignore_errors=True)
    shutil.copy(REALM_FILE, import_dir / REALM_FILE.name)
    stamp.write_text(digest)


def command(home: Path) -> list[str]:
    return [
        str(home / "bin" / "kc.sh"),
        "start-dev",
        f"--http-host={HOST}",
        f"--http-port={PORT}",
        f"--http-management-port={MANAGEMENT_PORT}",
        # a fixed issuer whatever Host header a client sends (localhost vs 127.0.0.1)
        f"--hostname={base_url()}",
        "--health-enabled=false",
        "--metrics-enabled=false",
        "--import-realm",
    ]


def environment(java: install.Java) -> dict[str, str]:
    return {
        "JAVA_HOME": str(Path(os.path.realpath(java.path)).parent.parent),
        "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # small heap: a test and demo server next to Kafka, the registry and ClickHouse
        "JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx512m",
        # C1 only: start-up is what the tests wait for, peak throughput does not matter here
        "JAVA_OPTS_APPEND": "-XX:TieredStopAtLevel=1",
    }


def _running_record(settings: Settings) -> PidRecord | None:
    record = _pids(settings).read(NAME)
    return record if record is not None and record.alive() else None


def start(settings: Settings | None = None, *, timeout: float = START_TIMEOUT, out=print) -> Keycloak:
    """Start Keycloak (or reuse one already answering) and wait until the realm is served."""
    settings = settings or load_settings()
    log = log_path(settings)
    record = _running_record(settings)
    if record is None and realm_ready():
        out(f"keycloak already answering at {base_url()} (not started here; left alone)")
        return Keycloak(base_url(), REALM, None, log, None)
    if record is not None:
        _wait_ready(record, timeout, log)
        out(f"keycloak already running at {base_url()} (pid {record.pid})")
        return Keycloak(base_url(), REALM, record.pid, log, None)
    for port in (PORT, MANAGEMENT_PORT):
        if port_open(HOST, port):
            owner = port_owner(port)
            who = f" by pid {owner}" if owner else ""
            raise Missing(f"port {port} (needed by Keycloak) is in use{who} and does not serve the {REALM} realm: stop that process")
    java = install.find_java(21, "Keycloak 26")
    app = install.fetch_keycloak(Path(settings.dist_dir))
    home = home_dir(settings)
    prepare_home(app, home)
    started = time.monotonic()
    # the marker: the home path is on both kc.sh's and (after its exec) java's command line
    record = spawn(NAME, command(home), log=log, marker=str(home), env=environment(java), cwd=home)
    _pids(settings).write(record)
    _wait_ready(record, timeout, log)
    elapsed = time.monotonic() - started
    out(f"keycloak up at {base_url()} in {elapsed:.1f}s (pid {record.pid}, log {log})")
    return Keycloak(base_url(), REALM, record.pid, log, elapsed)


def _wait_ready(record: PidRecord, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if realm_ready():
            return
        if not record.alive():
            raise Missing(f"keycloak exited while starting; last output: {_tail(log)} (log: {log})")
        time.sleep(0.5)
    raise Missing(
        f"keycloak did not serve the {REALM} realm within {timeout:.0f}s (pid {record.pid} still running); "
        f"last output: {_tail(log)} (log: {log})"
    )


def stop(settings: Settings | None = None, *, out=print) -> bool:
    """Stop the Keycloak this module started (by its pid file). True if one was running."""
    settings = settings or load_settings()
    record = _pids(settings).read(NAME)
    if record is None:
        return False
    was_running = stop_process(record, timeout=30)
    _pids(settings).remove(NAME)
    if was_running:
        out(f"keycloak stopped (pid {record.pid})")
    return was_running


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB (kc.sh runs java as a child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])[-500:] if lines else "(empty log)"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "status"
    try:
        if what == "start":
            kc = start()
            if kc.pid:
                print(f"keycloak pid {kc.pid}: {rss_mb(kc.pid):.0f} MB resident")
            print(f"issuer {kc.issuer}")
        elif what == "stop":
            if not stop():
                print("keycloak was not running (no live pid file)")
        elif what == "status":
            record = _running_record(load_settings())
            state = "serving the intelbus realm" if realm_ready() else "not answering"
            pid = f" (pid {record.pid}, {rss_mb(record.pid):.0f} MB)" if record else ""
            print(f"keycloak at {base_url()}: {state}{pid}")
        else:
            print("usage: python -m ops.keycloak start|stop|status", file=sys.stderr)
            return 2
    except Missing as e:
        print(f"intelbus: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
