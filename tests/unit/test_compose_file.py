"""No Docker engine runs here, so docker-compose.yml and the Dockerfile are kept honest by reading them.

Every container command must parse with the real `orderflow` CLI, every setting must be one orderflow/settings.py
reads (and pass its validation), ports and health checks must agree, every image must be pinned.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from orderflow.cli import parser
from orderflow.infra.kafka import KAFKA_VERSION
from orderflow.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"orders", "inventory", "cart", "notify"}
PORT_ENV = {name: f"{name.upper()}_HTTP_PORT" for name in SERVICES}
PARTITIONS = 8


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def worker_services(services: dict[str, dict]) -> dict[str, dict]:
    return {name: svc for name, svc in services.items() if list(svc.get("command") or [])[:1] == ["worker"]}


def runs_orderflow(svc: dict) -> bool:
    return "build" in svc or str(svc.get("image", "")).startswith("orderflow:")


def settings_env_names() -> set[str]:
    """Every NAME in `env.get("NAME", ...)`, `_int(env, "NAME", ...)`, `_bool(env, "NAME", ...)` of settings.py."""
    tree = ast.parse((ROOT / "orderflow" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_env_get = isinstance(func, ast.Attribute) and func.attr == "get" and getattr(func.value, "id", "") == "env"
        is_helper = isinstance(func, ast.Name) and func.id in {"_int", "_bool"}
        args = node.args if is_env_get else node.args[1:] if is_helper else []
        if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            names.add(args[0].value)
    return names


def service_port_envs() -> dict[str, str]:
    """port_env of each `services/<svc>/service.py` written so far, falling back to the documented names."""
    found = dict(PORT_ENV)
    for path in (ROOT / "services").glob("*/service.py"):
        match = re.search(r'port_env\s*=\s*"([A-Z_]+)"', path.read_text())
        if match:
            found[path.parent.name] = match.group(1)
    return found


def resolve(value: object) -> str:
    """A compose value as the container sees it: `${X:-default}` -> default, `${X:?msg}` -> a placeholder."""
    text = str(value)
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set-by-the-operator", text)


def container_commands(svc: dict) -> list[list[str]]:
    """The orderflow argv(s) a container runs: its command, or each `orderflow ...` of an `sh -c` entrypoint."""
    entrypoint = list(svc.get("entrypoint") or [])
    if entrypoint[:2] == ["sh", "-c"]:
        steps = [shlex.split(step) for step in entrypoint[2].split("&&")]
        assert all(step[0] == "orderflow" for step in steps), f"not an orderflow command: {entrypoint}"
        return [step[1:] for step in steps]
    assert not entrypoint, f"unexpected entrypoint {entrypoint}"
    return [list(svc.get("command") or ["worker", "orders"])]  # the Dockerfile's CMD


# --- docker-compose.yml ------------------------------------------------------------------------------------


def test_each_service_runs_as_one_worker_container(services):
    assert set(worker_services(services)) == SERVICES
    for name, svc in worker_services(services).items():
        assert svc["command"] == ["worker", name]
    with_code = {p.parent.name for p in (ROOT / "services").glob("*/service.py")}
    assert with_code <= SERVICES, f"services without a container: {with_code - SERVICES}"


def test_every_orderflow_command_parses_with_the_real_cli(services):
    cli = parser()
    for name, svc in services.items():
        if not runs_orderflow(svc):
            continue
        for argv in container_commands(svc):
            try:
                args = cli.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: `orderflow {' '.join(argv)}` is not a valid command")
            if args.command == "worker":
                assert args.service in SERVICES, f"{name}: unknown service {args.service}"


def test_init_job_creates_topics_then_migrates_and_workers_wait_for_it(services):
    assert [argv[0] for argv in container_commands(services["init"])] == ["topics", "migrate"]
    assert services["init"].get("restart") == "no"
    for name, svc in worker_services(services).items():
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully", name


def test_every_environment_name_is_a_setting_orderflow_reads(services):
    readable = settings_env_names() | set(service_port_envs().values())
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST", "BACKOFFICE_TOKEN"} <= readable  # parser sanity
    for name, svc in services.items():
        if runs_orderflow(svc):
            unknown = set(svc.get("environment") or {}) - readable
            assert not unknown, f"{name} sets names orderflow never reads: {unknown}"


def test_workers_get_every_documented_setting_and_it_validates(services):
    documented = {
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "SMTP_HOST",
        "SMTP_PORT",
        "BACKOFFICE_TOKEN",
        "TOPIC_PARTITIONS",
        "ABANDON_AFTER_SECONDS",
        "PUBLIC_STORE_URL",
        "ORDERFLOW_DATA_DIR",
    }
    ports = service_port_envs()
    for name, svc in worker_services(services).items():
        env = {k: resolve(v) for k, v in svc["environment"].items()}
        assert documented | {ports[name]} <= set(env), f"{name} misses {documented | {ports[name]} - set(env)}"
        settings = load_settings(name, ports[name], 0, env)  # raises SettingsError on a bad value
        assert settings.kafka_bootstrap_servers.split(":")[0] == "kafka"
        assert settings.database_url.split("@")[1].startswith("postgres:")
        assert settings.smtp_host == "mailpit"


def test_health_checks_and_published_ports_use_the_services_own_port(services):
    ports = service_port_envs()
    for name, svc in worker_services(services).items():
        port = int(svc["environment"][ports[name]])
        probe = " ".join(svc["healthcheck"]["test"])
        assert re.findall(r"https?://[^/]+:(\d+)/health", probe) == [str(port)], f"{name}: {probe}"
        assert "curl" not in probe and "wget" not in probe, "the slim image has neither; use python"
        targets = {str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])}
        assert targets <= {str(port)}, f"{name} publishes {targets}, listens on {port}"


def test_scalable_workers_publish_no_fixed_host_port(services):
    """`docker compose up --scale inventory=3` needs a host port range (or none), one port per replica."""
    taken: dict[int, str] = {}
    for name, svc in worker_services(services).items():
        for mapping in svc.get("ports", []):
            parts = str(mapping).split(":")
            if len(parts) == 1:
                continue  # container port only: Docker picks a free host port per replica
            low, _, high = parts[-2].partition("-")
            assert high, f"{name} publishes the fixed host port {parts[-2]}: a second replica could not start"
            span = range(int(low), int(high) + 1)
            assert len(span) >= PARTITIONS, f"{name}: {len(span)} host ports for up to {PARTITIONS} useful workers"
            for host_port in span:
                assert host_port not in taken, f"{name} and {taken.get(host_port)} share host port {host_port}"
                taken[host_port] = name


def test_workers_restart_and_keep_their_tables_on_a_volume(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in worker_services(services).items():
        assert svc["restart"] == "unless-stopped", name
        data_dir = svc["environment"]["ORDERFLOW_DATA_DIR"]
        mounts = {str(v).split(":")[-1] if ":" in str(v) else str(v): str(v) for v in svc["volumes"]}
        assert data_dir in mounts, f"{name}: no volume at ORDERFLOW_DATA_DIR={data_dir}"
        source = mounts[data_dir].split(":")[0] if ":" in mounts[data_dir] else None
        assert source is None or source in declared, f"{name}: volume {source} is not declared"


def test_every_depends_on_target_exists_and_can_satisfy_its_condition(services):
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        for target, rule in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert target in services, f"{name} depends on missing service {target}"
            condition = rule.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot job"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_every_image_is_pinned(services):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image name"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image} is not pinned to a tag"
        if runs_orderflow(svc):
            assert image == f"orderflow:{version}", f"{name}: the built image is tagged with the project version"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}", "same broker version as the local one"
    assert re.fullmatch(r"postgres:\d+\.\d+", services["postgres"]["image"])
    assert re.fullmatch(r"axllent/mailpit:v\d+\.\d+\.\d+", services["mailpit"]["image"])


def test_kafka_runs_kraft_with_a_valid_cluster_id(services):
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "16 bytes, base64url without padding"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from the catalogue, with their policies"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised.split(",")


# --- Dockerfile --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_base_is_a_pinned_slim_python_of_the_projects_version(dockerfile):
    """Both stages are FROM ${BASE} (the venv built in one must run on the same Python in the other); its default is
    a pinned slim Python of the project's version, and infra/containers passes its own local base."""
    bases = [line.split()[1] for line in dockerfile if line.upper().startswith("FROM ")]
    assert bases == ["${BASE}", "${BASE}"], "multi-stage: a builder and a runtime, both on BASE"
    default = next(line for line in dockerfile if line.startswith("ARG BASE=")).removeprefix("ARG BASE=")
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", default), default


def test_dockerfile_installs_the_lock_and_runs_as_a_user(dockerfile):
    runs = " ".join(line for line in dockerfile if line.startswith("RUN "))
    assert "pip install --no-deps --require-hashes -r requirements-runtime.lock" in runs
    lock = (ROOT / "requirements-runtime.lock").read_text()
    pins = [line.removesuffix(" \\") for line in lock.splitlines() if line and line[0] not in "# "]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._\[\],-]+==[^=\s]+", pin) for pin in pins), "exact pins only"
    assert lock.count("==") == len(pins) and "--hash=sha256:" in lock
    runtime = dockerfile[max(i for i, line in enumerate(dockerfile) if line.startswith("FROM ")) :]
    users = [line.split()[1].split(":")[0] for line in runtime if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the runtime stage must not run as root"
    assert 'ENTRYPOINT ["orderflow"]' in runtime
    cmd = next(line for line in runtime if line.startswith("CMD "))
    assert parser().parse_args(yaml.safe_load(cmd[4:])).command == "worker"


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".run", "tests"} <= ignored
