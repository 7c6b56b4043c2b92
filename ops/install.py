"""Finding and installing what the local stack runs on: Java, Maven jars, ClickHouse.

Every failure is a `Missing` with one line saying what is missing and how to fix it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ops.settings import REPO_ROOT

KAFKA_POM = REPO_ROOT / "ops" / "kafka" / "pom.xml"
REGISTRY_POM = REPO_ROOT / "ops" / "registry" / "pom.xml"
ZOOKEEPER_POM = REPO_ROOT / "ops" / "zookeeper" / "pom.xml"
# chromium: the console's browser tests (Playwright drives it); a CJK font so it renders the Chinese labels
APT_PACKAGES = ("clickhouse-server", "clickhouse-client", "chromium", "fonts-wqy-microhei",
                "systemd")  # systemd-analyze and systemd-sysusers check ops/systemd/ in the suite


class Missing(RuntimeError):
    """A prerequisite is missing; str() is the one-line message for the user."""


@dataclass(frozen=True)
class Java:
    path: str
    major: int


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def _java_candidates() -> list[str]:
    found = []
    for var in ("INTELBUS_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            found.append(str(Path(os.environ[var]) / "bin" / "java"))
    if shutil.which("java"):
        found.append(shutil.which("java"))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        found.extend(str(p / "bin" / "java") for p in sorted(jvm.iterdir()) if (p / "bin" / "java").exists())
    seen, unique = set(), []
    for path in found:
        real = os.path.realpath(path)
        if real not in seen and os.access(real, os.X_OK):
            seen.add(real)
            unique.append(path)
    return unique


def find_java(min_major: int, purpose: str) -> Java:
    """The first Java of at least min_major: INTELBUS_JAVA_HOME, JAVA_HOME, PATH, /usr/lib/jvm."""
    seen = []
    for path in _java_candidates():
        major = _java_major(path)
        if major is None:
            continue
        seen.append(f"{major}")
        if major >= min_major:
            return Java(path, major)
    have = f" (found Java {', '.join(seen)})" if seen else " (no Java found)"
    raise Missing(
        f"{purpose} needs Java {min_major} or newer{have}: install one (e.g. a Temurin or OpenJDK "
        f"{min_major}+ JDK) and set INTELBUS_JAVA_HOME to its directory"
    )


def require_maven() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise Missing("Maven (mvn) is missing: run `apt-get install maven` (it fetches Kafka and the registry from Maven Central)")
    return mvn


def fetch_maven(pom: Path, dest: Path, what: str) -> Path:
    """Copy pom's dependencies into dest (Maven's own cache makes reruns fast)."""
    marker = dest / ".complete"
    if marker.exists() and marker.read_text() == pom.read_text():
        return dest
    mvn = require_maven()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    proc = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={dest}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "ERROR" in l]
        cause = lines[0].replace("[ERROR]", "").strip()[:300] if lines else "see `mvn -f " + str(pom) + " dependency:copy-dependencies`"
        raise Missing(f"could not fetch {what} from Maven Central: {cause}")
    marker.write_text(pom.read_text())
    return dest


def fetch_kafka(dist: Path) -> Path:
    """Kafka's jars (and the log binding) under dist/kafka/libs."""
    return fetch_maven(KAFKA_POM, dist / "kafka" / "libs", "Kafka")


def fetch_zookeeper(dist: Path) -> Path:
    """ZooKeeper's jars under dist/zookeeper/libs (the cluster profile's ClickHouse replicas)."""
    return fetch_maven(ZOOKEEPER_POM, dist / "zookeeper" / "libs", "ZooKeeper")


def fetch_registry(dist: Path) -> Path:
    """The Apicurio Registry server unpacked under dist/registry/app (holds quarkus-run.jar)."""
    app = dist / "registry" / "app"
    archive_dir = fetch_maven(REGISTRY_POM, dist / "registry" / "archive", "Apicurio Registry")
    if (app / "quarkus-run.jar").exists() and (app / ".from").read_text() == _newest(archive_dir).name:
        return app
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    archive = _newest(archive_dir)
    with tarfile.open(archive) as tar:
        tar.extractall(app, filter="data")
    # the archive may hold a top-level folder; flatten so quarkus-run.jar is in app/
    if not (app / "quarkus-run.jar").exists():
        inner = next(app.glob("*/quarkus-run.jar"), None)
        if inner is None:
            raise Missing(f"{archive.name} holds no quarkus-run.jar: check ops/registry/pom.xml")
        for item in inner.parent.iterdir():
            item.rename(app / item.name)
    (app / ".from").write_text(archive.name)
    return app


def _newest(folder: Path) -> Path:
    archives = sorted(folder.glob("*.tar.gz"))
    if not archives:
        raise Missing(f"no registry archive in {folder}: delete it and run `intelbus install` again")
    return archives[-1]


def clickhouse_server_binary() -> str:
    for name in ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        path = shutil.which(name) or (name if os.path.exists(name) else None)
        if path:
            return path
    clickhouse = shutil.which("clickhouse")
    if clickhouse:  # the single-binary distribution: `clickhouse server`
        return clickhouse
    raise Missing("clickhouse-server is missing: run `make install` (apt-get install clickhouse-server) or install ClickHouse")


def install_apt_packages(packages=APT_PACKAGES, *, log=print) -> None:
    """apt-get install the packages that are missing (needs root or sudo)."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise Missing(f"{', '.join(missing)} missing and apt-get unavailable: install them by your platform's means (ClickHouse server and client; chromium and a CJK font only for the browser tests)")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        raise Missing(f"{', '.join(missing)} missing: run `sudo apt-get install {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {', '.join(missing)} with apt-get ...")
    update = subprocess.run(prefix + ["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
    if update.returncode != 0:
        raise Missing(f"apt-get update failed: {_last_line(update)}")
    proc = subprocess.run(prefix + ["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise Missing(f"apt-get install {' '.join(missing)} failed: {_last_line(proc)}")


def _dpkg_installed(package: str) -> bool:
    if not shutil.which("dpkg-query"):
        return shutil.which(package) is not None
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
    return lines[-1][:300] if lines else f"exit code {proc.returncode}"


def promtool_path(dist: Path) -> Path:
    return dist / "promtool" / "usr" / "bin" / "promtool"


def fetch_promtool(dist: Path, *, log=print) -> Path | None:
    """Prometheus's promtool (checks the alert rules), unpacked from Debian's package without installing it.

    Optional: where apt-get is missing or the download fails, the rules are checked by parsing only.
    """
    target = promtool_path(dist)
    if target.exists():
        return target
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        log("promtool: apt-get/dpkg-deb missing, alert rules will be checked by parsing only")
        return None
    download = dist / "promtool" / "deb"
    download.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", "-q", "prometheus"], cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob("prometheus_*.deb"))
    if proc.returncode != 0 or not debs:
        log(f"promtool: apt-get download prometheus failed ({_last_line(proc)}); alert rules checked by parsing only")
        return None
    unpack = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dist / "promtool")], capture_output=True, text=True)
    if unpack.returncode != 0 or not target.exists():
        log(f"promtool: could not unpack {debs[-1].name}: {_last_line(unpack)}")
        return None
    for deb in debs:
        deb.unlink()
    return target


def install_all(dist: Path, *, log=print) -> None:
    """Everything the local stack needs: apt packages, Kafka jars, the registry."""
    install_apt_packages(log=log)
    find_java(17, "Kafka")
    find_java(21, "Apicurio Registry 3")
    log("fetching Kafka jars with Maven (cached in ~/.m2) ...")
    fetch_kafka(dist)
    log("fetching Apicurio Registry with Maven (cached in ~/.m2) ...")
    fetch_registry(dist)
    log("fetching ZooKeeper with Maven (the cluster profile; cached in ~/.m2) ...")
    fetch_zookeeper(dist)
    fetch_promtool(dist, log=log)


def fetch_keycloak(dist: Path) -> Path:
    """The Keycloak server unpacked under dist/keycloak/app (holds bin/kc.sh), for the OIDC tests and demo.

    Maven Central serves it as a zip; Python's zipfile drops the Unix modes, so the launch
    scripts are made executable again after unpacking.
    """
    import zipfile

    # Maven resolves a relative output directory against the pom's folder, not ours
    dist = Path(dist).resolve()
    pom = REPO_ROOT / "ops" / "keycloak" / "pom.xml"
    app = dist / "keycloak" / "app"
    archive_dir = fetch_maven(pom, dist / "keycloak" / "archive", "Keycloak")
    archives = sorted(archive_dir.glob("keycloak-quarkus-dist-*.zip"))
    if not archives:
        raise Missing(f"no Keycloak zip in {archive_dir}: delete it and run the fetch again")
    archive = archives[-1]
    if (app / "bin" / "kc.sh").exists() and (app / ".from").exists() and (app / ".from").read_text() == archive.name:
        return app
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(app)
    # the zip holds one top-level folder (keycloak-<version>/); flatten so bin/kc.sh is in app/
    if not (app / "bin" / "kc.sh").exists():
        inner = next(app.glob("*/bin/kc.sh"), None)
        if inner is None:
            raise Missing(f"{archive.name} holds no bin/kc.sh: check ops/keycloak/pom.xml")
        for item in inner.parent.parent.iterdir():
            item.rename(app / item.name)
        inner.parent.parent.rmdir()
    for script in (app / "bin").glob("*.sh"):
        script.chmod(0o755)
    (app / ".from").write_text(archive.name)
    return app
