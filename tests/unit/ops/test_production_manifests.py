"""The production files that keep intelbus's processes running (ops/systemd, ops/k8s) are valid
for the tools that read them, and agree with the code they run: the services `intelbus up`
starts, the subcommands and their options, the settings, the passwords, the ports and the state
directory. A change on either side that the other does not follow fails here.
"""
from __future__ import annotations

import dataclasses
import http.server
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from ops.cli import build_parser
from ops.kafka_auth import ADMIN, GATEWAY, JOBS, SINK
from ops.secrets import CLICKHOUSE_USERS, kafka_password_env_var, password_env_var
from ops.services import services
from ops.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
SYSTEMD = ROOT / "ops" / "systemd"
K8S = ROOT / "ops" / "k8s"
INSTALLED_BINARY = "/opt/intelbus/venv/bin/intelbus"  # where ops/systemd/README.md installs it

# Kubernetes versions the manifests must be valid for: 1.28 is the first whose StatefulSet pods
# carry the apps.kubernetes.io/pod-index label the jobs' worker index comes from.
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")

# Which passwords each process reads (docs/deploy.md: "set in each service's environment only its
# own"); the command is `intelbus <name>`.
PASSWORDS = {
    "jobs": {kafka_password_env_var(JOBS)},
    "workflows": {kafka_password_env_var(JOBS)},
    "sink": {kafka_password_env_var(SINK), password_env_var("intelbus_sink")},
    "gateway": {kafka_password_env_var(GATEWAY), password_env_var("intelbus_gateway"),
                password_env_var("intelbus_reader")},
}
INTELBUS_VAR = re.compile(r"\bINTELBUS_[A-Z0-9_]+")
SETTING_VARS = {f.metadata["env"] for f in dataclasses.fields(Settings)}
PASSWORD_VARS = ({kafka_password_env_var(u) for u in (ADMIN, JOBS, SINK, GATEWAY)}
                 | {password_env_var(u) for u in CLICKHOUSE_USERS})
ADMIN_PASSWORDS = {kafka_password_env_var(ADMIN), password_env_var("default")}


# --- reading the files -------------------------------------------------------------------------

def unit_files() -> list[Path]:
    return sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")])


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_units() -> dict[str, dict]:
    return {p.name: parse_unit(p) for p in sorted(SYSTEMD.glob("*.service"))}


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def on_host(path: str) -> Path:
    """An /etc/intelbus/... path of the units -> its example under ops/systemd/."""
    return SYSTEMD / path.removeprefix("/etc/intelbus/")


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            if doc:
                docs.append((name, doc))
    return docs


def workloads() -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] in ("StatefulSet", "Deployment")]


def containers(workload: dict, *, init: bool = False) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("containers", []) + (spec.get("initContainers", []) if init else [])


def configmap() -> dict[str, str]:
    (data,) = [doc["data"] for _, doc in manifests() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "intelbus-settings"]
    return data


def intelbus_args_of_unit(unit: dict, instance: str = "0") -> list[str]:
    (exec_start,) = unit["Service"]["ExecStart"]
    binary, *args = exec_start.replace("%i", instance).split()
    assert binary == INSTALLED_BINARY, f"ExecStart runs {binary}, not the installed {INSTALLED_BINARY}"
    return args


def intelbus_args_of_container(container: dict, index: str = "0") -> list[str]:
    command = [c.replace("$(POD_INDEX)", index) for c in container["command"] + container.get("args", [])]
    assert command[0] == "intelbus", f"container {container['name']} runs {command[0]}, not intelbus"
    return command[1:]


def without_listen_address(args: list[str]) -> list[str]:
    """The gateway's pod listens on all its interfaces (--host 0.0.0.0 --port 8080): the same process."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("--host", "--port"):
            skip = True
        else:
            out.append(a)
    return out


def up_services(workers: int = 2):
    """What `intelbus up` starts with `workers` jobs workers: (name, intelbus argv, metrics offset)."""
    settings = load_settings({"INTELBUS_JOBS_WORKERS": str(workers)})
    return [(s.name, s.argv[2:], s.metrics_port - settings.metrics_port_base) for s in services(settings)]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
    if path is None:
        pytest.fail("systemd-analyze not found: install systemd (`apt-get install systemd`), it checks ops/systemd/")
    return path


def systemd_version() -> int:
    out = subprocess.run([systemd_analyze(), "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))


@pytest.fixture
def units_with_stub(tmp_path):
    """The units copied to tmp_path, ExecStart pointing at an executable stub (verify checks it exists)."""
    stub = tmp_path / "intelbus"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for path in unit_files():
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8").replace(INSTALLED_BINARY, str(stub)))
    return tmp_path


def verify(directory: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_analyze(), "verify", "--man=no", "--generators=no", *(f"./{n}" for n in names)],
                          cwd=directory, capture_output=True, text=True, timeout=60)


# --- systemd -----------------------------------------------------------------------------------

def test_every_unit_passes_systemd_analyze_verify_without_a_warning(units_with_stub):
    names = [p.name.replace("@.service", "@0.service") for p in unit_files()]
    result = verify(units_with_stub, *names)
    # systemd-analyze exits 0 on an unknown key or a value it cannot parse, and only says so
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_backoff_drop_in_only_adds_what_newer_systemd_knows(units_with_stub):
    dropin = units_with_stub / "intelbus-sink.service.d"
    dropin.mkdir()
    shutil.copy(SYSTEMD / "restart-backoff.conf", dropin / "restart-backoff.conf")
    result = verify(units_with_stub, "intelbus-sink.service")
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    if systemd_version() >= 254:
        assert complaints == []
    else:  # 252 (Debian 12): the two keys are ignored, the unit's fixed RestartSec stays
        assert len(complaints) == 2 and all(re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", c)
                                            for c in complaints), complaints
    keys = parse_unit(SYSTEMD / "restart-backoff.conf")["Service"]
    assert set(keys) == {"RestartSteps", "RestartMaxDelaySec"}


def test_the_units_user_is_made_by_the_sysusers_file(tmp_path):
    sysusers = shutil.which("systemd-sysusers") or pytest.fail("systemd-sysusers not found: install systemd")
    (tmp_path / "etc").mkdir()
    result = subprocess.run([sysusers, f"--root={tmp_path}", str(SYSTEMD / "intelbus.sysusers.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    made = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    for name, unit in service_units().items():
        (user,) = unit["Service"]["User"]
        assert user in made and user != "root", f"{name} runs as {user}, which intelbus.sysusers.conf does not create"
        assert made[user][2] != "0"


def test_every_unit_restarts_with_a_delay_stops_on_sigterm_and_is_confined():
    for name, unit in service_units().items():
        svc = unit["Service"]
        assert svc["Restart"] in (["always"], ["on-failure"]), name
        assert float(svc["RestartSec"][0].removesuffix("s")) >= 1, f"{name}: restarts without a delay"
        assert unit["Unit"]["StartLimitIntervalSec"] == ["0"], f"{name}: would give up after a burst of restarts"
        assert svc["KillSignal"] == ["SIGTERM"], name
        assert svc["NoNewPrivileges"] == ["yes"] and svc["ProtectSystem"] == ["strict"], name
        assert unit["Install"]["WantedBy"] == ["intelbus.target"] and unit["Unit"]["PartOf"] == ["intelbus.target"], name


def test_the_state_directory_is_the_stack_dir_and_writable_under_protect_system_strict():
    settings = env_file(SYSTEMD / "intelbus.env")
    for name, unit in service_units().items():
        svc = unit["Service"]
        assert svc["EnvironmentFile"][0] == "/etc/intelbus/intelbus.env", name
        # ProtectSystem=strict leaves only the StateDirectory writable: it must be where the code writes
        (state,) = svc["StateDirectory"]
        assert settings["INTELBUS_STACK_DIR"] == f"/var/lib/{state}", name
        assert svc["WorkingDirectory"] == [f"/var/lib/{state}"], name


def test_each_unit_reads_only_its_own_passwords():
    for name, unit in service_units().items():
        command = intelbus_args_of_unit(unit)[0]
        secrets = [on_host(p.lstrip("-")) for p in unit["Service"]["EnvironmentFile"] if "/secrets/" in p]
        given = {k for path in secrets for k in env_file(path)}
        assert given == PASSWORDS[command], f"{name} gets {sorted(given)}"
        assert not set(env_file(SYSTEMD / "intelbus.env")) & PASSWORD_VARS, "a password in the shared intelbus.env"


# --- Kubernetes --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas_strictly(version):
    import kubernetes_validate

    docs = manifests()
    assert docs
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message} "
                        f"at {'/'.join(map(str, exc.path))}")


def test_the_kustomization_lists_every_manifest_in_one_namespace_and_one_image():
    k = kustomization()
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == on_disk
    for name, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == k["namespace"], f"{name}: {doc['kind']}/{doc['metadata']['name']}"
    images = {c["image"] for w in workloads() for c in containers(w, init=True)}
    assert images == {i["name"] for i in k["images"]}


def test_kustomize_builds_what_the_files_declare_with_the_image_set():
    """`kubectl apply -k ops/k8s` applies kustomize's output, not the files: it must build and stay valid."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH (its built-in kustomize renders ops/k8s); the files themselves are validated above")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import kubernetes_validate

    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for _, d in manifests())
    (image,) = kustomization()["images"]
    for doc in built:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "intelbus"
        if doc["kind"] in ("StatefulSet", "Deployment"):
            for c in containers(doc, init=True):
                assert c["image"] == f"{image['newName']}:{image['newTag']}", c["name"]


def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem_with_state_where_the_code_writes():
    stack_dir = configmap()["INTELBUS_STACK_DIR"]
    for w in workloads():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for c in containers(w, init=True):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert "limits" in c["resources"] and "requests" in c["resources"], c["name"]
        if w["kind"] == "StatefulSet":  # its volume is the stack dir, the only place it writes
            (claim,) = w["spec"]["volumeClaimTemplates"]
            mounts = {m["name"]: m["mountPath"] for c in containers(w) for m in c["volumeMounts"]}
            assert mounts[claim["metadata"]["name"]] == stack_dir, w["metadata"]["name"]


def test_the_worker_index_is_the_pod_ordinal():
    """Kubernetes leaves an undefined $(VAR) as it is: `--worker-index $(POD_INDEX)` would not parse."""
    used = 0
    for w in workloads():
        for c in containers(w):
            if not any("$(POD_INDEX)" in part for part in c["command"] + c.get("args", [])):
                continue
            assert w["kind"] == "StatefulSet", f"{c['name']}: only a StatefulSet's pods have ordinals"
            (var,) = [e for e in c["env"] if e["name"] == "POD_INDEX"]
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
            used += 1
    assert used == 1  # the jobs workers


def test_the_keyring_is_copied_where_the_jobs_read_it():
    from identity.keys import keys_path

    (jobs,) = [w for w in workloads() if w["metadata"]["name"] == "intelbus-jobs"]
    (init,) = jobs["spec"]["template"]["spec"]["initContainers"]
    expected = str(keys_path(Settings(stack_dir=configmap()["INTELBUS_STACK_DIR"])))
    assert f'"{expected}"' in " ".join(init["command"])


def test_the_kafka_ca_in_the_settings_is_mounted_in_every_container_that_talks_to_kafka():
    security = dict(item.split("=", 1) for item in configmap()["INTELBUS_KAFKA_SECURITY"].split(","))
    ca = Path(security["ssl.ca.location"])
    for w in workloads():
        for c in containers(w):
            mounted = {Path(m["mountPath"]) for m in c["volumeMounts"]}
            assert ca.parent in mounted, f"{c['name']}: {ca} is not mounted"


def test_each_container_gets_only_its_own_passwords_from_secrets():
    for w in workloads():
        for c in containers(w):
            command = intelbus_args_of_container(c)[0]
            env = {e["name"]: e for e in c.get("env", [])}
            given = {n for n in env if n in PASSWORD_VARS}
            assert given == PASSWORDS[command], f"{c['name']} gets {sorted(given)}"
            for n in given:  # a reference, never a value written in the manifest
                assert "value" not in env[n] and "secretKeyRef" in env[n]["valueFrom"], n


# --- both: agreement with the code -------------------------------------------------------------

def test_every_service_up_starts_has_a_unit_and_a_manifest():
    unit_commands = [intelbus_args_of_unit(u, instance) for u in service_units().values() for instance in ("0", "1")]
    k8s_commands = {w["metadata"]["name"]: w for w in workloads()}
    for name, argv, _ in up_services(workers=2):
        index = name.rsplit("-", 1)[1] if name[-1].isdigit() else "0"
        assert argv in unit_commands, f"`intelbus up` starts {name} (intelbus {' '.join(argv)}): no unit in ops/systemd runs it"
        in_k8s = [w for w in k8s_commands.values() for c in containers(w)
                  if without_listen_address(intelbus_args_of_container(c, index)) == argv]
        assert in_k8s, f"`intelbus up` starts {name} (intelbus {' '.join(argv)}): no workload in ops/k8s runs it"
        if name.startswith("jobs-"):  # several workers: as many pods, each its own index
            # a worker is ready only once it holds partitions: one more than there are never is
            partitions = int(configmap()["INTELBUS_PARTITIONS"])
            assert in_k8s[0]["kind"] == "StatefulSet" and 1 <= in_k8s[0]["spec"]["replicas"] <= partitions


def test_the_extra_environment_up_gives_a_service_is_in_its_unit_and_manifest():
    """What `intelbus up` sets in a service's environment beyond the settings (the jobs' glibc mmap
    threshold) is what systemd and Kubernetes set for it: the same process, the same memory."""
    settings = load_settings({"INTELBUS_JOBS_WORKERS": "1"})
    checked = 0
    for service in services(settings):
        argv = service.argv[2:]
        units = [u for u in service_units().values() if intelbus_args_of_unit(u) == argv]
        pods = [c for w in workloads() for c in containers(w) if without_listen_address(intelbus_args_of_container(c)) == argv]
        for key, value in service.env.items():
            for unit in units:
                pairs = dict(p.split("=", 1) for line in unit["Service"].get("Environment", []) for p in line.split())
                assert pairs.get(key) == value, f"{service.name}: `intelbus up` sets {key}={value}, its unit {pairs.get(key)}"
            for c in pods:
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env.get(key) == value, f"{service.name}: `intelbus up` sets {key}={value}, its pod {env.get(key)}"
            checked += 1
    assert checked, "no service has an extra environment: the test checks nothing"


def test_every_command_is_a_real_subcommand_with_real_options():
    parser = build_parser()
    commands = [intelbus_args_of_unit(u) for u in service_units().values()]
    commands += [intelbus_args_of_container(c) for w in workloads() for c in containers(w)]
    assert len(commands) >= 8
    for args in commands:
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"`intelbus {' '.join(args)}` does not parse (see the error above)")
        assert parsed.command == args[0]


def test_every_intelbus_variable_named_is_a_setting_or_a_password_the_code_reads():
    files = [p for p in [*SYSTEMD.rglob("*"), *K8S.rglob("*")] if p.is_file() and p.suffix != ".md"]
    named = {(p.relative_to(ROOT), v) for p in files for v in INTELBUS_VAR.findall(p.read_text(encoding="utf-8"))}
    assert named
    unknown = sorted(f"{p}: {v}" for p, v in named if v not in SETTING_VARS | PASSWORD_VARS)
    assert not unknown, "not a setting (`intelbus config`) nor a password ops/secrets.py reads: " + ", ".join(unknown)
    admin = sorted(f"{p}: {v}" for p, v in named if v in ADMIN_PASSWORDS)
    assert not admin, "the admin's password belongs on the operators' host only: " + ", ".join(admin)
    # every value given must parse as its setting does
    load_settings(env_file(SYSTEMD / "intelbus.env"))
    load_settings(configmap())


def test_the_ports_are_the_settings_defaults():
    defaults = Settings()
    gateway_port = urlparse(defaults.gateway_url).port
    host_env = env_file(SYSTEMD / "intelbus.env")
    assert int(host_env["INTELBUS_METRICS_PORT_BASE"]) == defaults.metrics_port_base
    assert urlparse(host_env["INTELBUS_GATEWAY_URL"]).port == gateway_port
    assert int(configmap()["INTELBUS_METRICS_PORT_BASE"]) == defaults.metrics_port_base
    (gateway,) = [w for w in workloads() if w["metadata"]["name"] == "intelbus-gateway"]
    (c,) = containers(gateway)
    args = intelbus_args_of_container(c)
    assert int(args[args.index("--port") + 1]) == gateway_port == c["ports"][0]["containerPort"]
    (svc,) = [d for _, d in manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "intelbus-gateway"]
    assert svc["spec"]["ports"][0]["port"] == gateway_port


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_probe(command: list[str], env: dict[str, str]) -> int:
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_the_probes_ask_each_process_on_its_metrics_port_for_readiness(metrics_server):
    """Each exec probe is run against a metrics endpoint on the port the process would use (its
    offset from INTELBUS_METRICS_PORT_BASE as `intelbus up` computes it): ready only on
    `intelbus_service_ready 1`, alive while the endpoint answers, dead when nothing listens."""
    port = metrics_server.server_address[1]
    offsets = {name: offset for name, _, offset in up_services(workers=2)}
    checked = 0
    for w in workloads():
        for c in containers(w):
            if "exec" not in c.get("readinessProbe", {}):
                continue
            command = intelbus_args_of_container(c)
            for index in (["0", "1"] if command[0] == "jobs" else ["0"]):
                name = {"jobs": f"jobs-{index}", "workflows": f"workflows-{index}"}.get(command[0], command[0])
                env = {"PATH": "/usr/bin:/bin", "POD_INDEX": index,
                       "INTELBUS_METRICS_PORT_BASE": str(port - offsets[name])}
                _Metrics.body = b"# HELP x\nintelbus_service_ready 1.0\n"
                assert run_probe(c["readinessProbe"]["exec"]["command"], env) == 0, name
                assert run_probe(c["livenessProbe"]["exec"]["command"], env) == 0, name
                _Metrics.body = b"# HELP x\nintelbus_service_ready 0.0\n"
                assert run_probe(c["readinessProbe"]["exec"]["command"], env) != 0, f"{name}: ready while not ready"
                assert run_probe(c["livenessProbe"]["exec"]["command"], env) == 0, f"{name}: killed for not being ready"
                env["INTELBUS_METRICS_PORT_BASE"] = str(free_port() - offsets[name])  # nobody there
                assert run_probe(c["livenessProbe"]["exec"]["command"], env) != 0, f"{name}: alive with nothing listening"
                checked += 1
    assert checked == 4  # jobs 0 and 1, workflows, sink
