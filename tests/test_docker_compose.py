"""Static checks of the Docker Compose stack (no Docker engine needed: the files are only parsed).

yaml.safe_load resolves the `&anchor` / `*alias` references and `<<` merge keys, so every service is
checked as Compose sees it after merging x-airflow-common into it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
POSTGRES_INIT_DIR = ROOT / "docker" / "postgres-init"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "airflow-cli",
    "flower",
)
LONG_RUNNING_AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "flower",
)
INFINSTRUCT_URL = "postgresql+psycopg2://airflow:airflow@postgres/infinstruct"


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"missing {COMPOSE_FILE}"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yaml is not a YAML mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yaml has no services mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict:
    """A service's environment as a dict (Compose also allows a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def mounts_of(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        # resolve ${VAR:-default} / ${VAR-default} to the default, as Compose does when VAR is unset
        volume = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", volume)
        parts = volume.split(":")
        assert len(parts) >= 2, f"unexpected volume entry {volume!r}"
        host, container = parts[0], parts[1]
        mounts[container] = host
    return mounts


def depends_on_of(service: dict) -> dict:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax has no conditions
        deps = {name: {} for name in deps}
    return deps


# --- structure ---------------------------------------------------------------------------------


def test_all_expected_services_exist(services):
    expected = {"postgres", "redis", *AIRFLOW_SERVICES}
    missing = expected - set(services)
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"


def test_optional_services_are_behind_profiles(services):
    assert services["airflow-cli"].get("profiles") == ["debug"]
    assert services["flower"].get("profiles") == ["flower"]
    for name in ("postgres", "redis", *LONG_RUNNING_AIRFLOW_SERVICES[:-1], "airflow-init"):
        assert not services[name].get("profiles"), f"{name} must start by default (no profile)"


def test_common_anchor_is_merged_into_airflow_services(compose, services):
    common = compose.get("x-airflow-common")
    assert isinstance(common, dict), "x-airflow-common block is missing"
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service.get("image") == common["image"], f"{name} does not use the common image"
        assert service.get("build") == common["build"], f"{name} does not build the common image"
        assert service.get("user") == common["user"] or name == "airflow-init"


def test_image_is_built_from_the_repo_dockerfile(compose):
    common = compose["x-airflow-common"]
    build = common.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context == ".", f"x-airflow-common must build the repo root, got {build!r}"
    assert common["image"] == "${AIRFLOW_IMAGE_NAME:-infinstruct-airflow:3.3.2}"


def test_apiserver_publishes_port_8080(services):
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert "8080:8080" in [str(p) for p in services["airflow-apiserver"].get("ports", [])]


def test_components_run_the_right_commands(services):
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert services["airflow-triggerer"]["command"] == "triggerer"
    assert services["flower"]["command"] == "celery flower"


# --- environment -------------------------------------------------------------------------------


def test_common_env_uses_celery_executor_with_redis_and_postgres(compose):
    env = env_of(compose["x-airflow-common"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://airflow:airflow@postgres/airflow"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")


def test_common_env_project_settings(compose):
    env = env_of(compose["x-airflow-common"])
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == ("airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert env["PYTHONPATH"] == "/opt/airflow/include"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_every_airflow_service_has_the_infinstruct_database_url(services, name):
    env = env_of(services[name])
    assert env.get("INFINSTRUCT_DATABASE_URL") == INFINSTRUCT_URL, f"{name} lacks INFINSTRUCT_DATABASE_URL"
    assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", f"{name} lost the common environment"
    assert env.get("PYTHONPATH") == "/opt/airflow/include", f"{name} cannot import infinstruct"


def test_worker_keeps_warm_shutdown_setting(services):
    assert str(env_of(services["airflow-worker"]).get("DUMB_INIT_SETSID")) == "0"


# --- mounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["airflow-scheduler", "airflow-worker", "airflow-dag-processor", "airflow-triggerer"])
def test_project_folders_are_mounted(services, name):
    mounts = mounts_of(services[name])
    for folder in ("dags", "plugins", "include", "logs", "config", "releases", "data"):
        container = f"/opt/airflow/{folder}"
        assert container in mounts, f"{name}: {container} is not mounted"
        assert mounts[container].endswith(f"/{folder}") or mounts[container] == f"./{folder}", (
            f"{name}: {container} is mounted from {mounts[container]!r}"
        )


def test_releases_go_to_the_folder_every_container_shares(compose):
    """Any worker writes a partition's release part and the export hard-links them: one shared folder."""
    assert compose["x-airflow-common"]["environment"]["INFINSTRUCT_OUT"] == "/opt/airflow/releases"


def test_mounted_project_folders_exist_in_the_repo():
    for folder in ("dags", "plugins", "include"):
        assert (ROOT / folder).is_dir(), f"{folder}/ is mounted into the containers but missing"
    assert (ROOT / "include" / "infinstruct").is_dir(), "PYTHONPATH=/opt/airflow/include needs include/infinstruct"


# --- postgres and redis ------------------------------------------------------------------------


def test_postgres_is_pgvector_with_healthcheck(services):
    postgres = services["postgres"]
    assert postgres["image"] == "pgvector/pgvector:pg16"
    env = env_of(postgres)
    assert env["POSTGRES_USER"] == "airflow"
    assert env["POSTGRES_DB"] == "airflow"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_redis_is_7_2_with_healthcheck(services):
    redis = services["redis"]
    assert redis["image"] == "redis:7.2-bookworm"
    test = redis["healthcheck"]["test"]
    assert "redis-cli" in test and "ping" in test


def test_postgres_init_script_creates_infinstruct_database(services):
    mounts = mounts_of(services["postgres"])
    assert "/docker-entrypoint-initdb.d" in mounts, "postgres init scripts are not mounted"
    host_dir = ROOT / mounts["/docker-entrypoint-initdb.d"]
    assert host_dir.resolve() == POSTGRES_INIT_DIR.resolve()
    scripts = sorted(p for p in host_dir.iterdir() if p.suffix in {".sql", ".sh"})
    assert scripts, f"no init script in {host_dir}"
    text = "\n".join(p.read_text() for p in scripts)
    assert re.search(r"CREATE DATABASE\s+infinstruct\b", text, re.IGNORECASE)
    assert re.search(r"CREATE EXTENSION IF NOT EXISTS\s+vector\b", text, re.IGNORECASE)


def test_airflow_init_creates_infinstruct_database_and_pool(services):
    init = services["airflow-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "INFINSTRUCT_DATABASE_URL" in script
    assert "CREATE DATABASE" in script
    from infinstruct.stages import AIRFLOW_POOLS

    assert AIRFLOW_POOLS and all(f"airflow pools set {pool} " in script for pool in AIRFLOW_POOLS)  # none waits forever
    env = env_of(init)
    assert env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert init["user"] == "0:0"


# --- healthchecks and start order ----------------------------------------------------------------


@pytest.mark.parametrize("name", LONG_RUNNING_AIRFLOW_SERVICES)
def test_long_running_services_have_healthchecks(services, name):
    healthcheck = services[name].get("healthcheck")
    assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
    assert services[name].get("restart") == "always"


def test_worker_depends_on_healthy_redis_and_postgres(services):
    deps = depends_on_of(services["airflow-worker"])
    assert deps.get("redis", {}).get("condition") == "service_healthy"
    assert deps.get("postgres", {}).get("condition") == "service_healthy"
    assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully"
    assert deps.get("airflow-apiserver", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", [n for n in LONG_RUNNING_AIRFLOW_SERVICES if n != "airflow-worker"])
def test_components_wait_for_backends_and_init(services, name):
    deps = depends_on_of(services[name])
    assert deps.get("redis", {}).get("condition") == "service_healthy", name
    assert deps.get("postgres", {}).get("condition") == "service_healthy", name
    assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", name


def test_named_volume_for_postgres_is_declared(compose):
    assert "postgres-db-volume" in (compose.get("volumes") or {})


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_extends_airflow_and_installs_requirements():
    assert DOCKERFILE.is_file(), "Dockerfile missing at the repo root"
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == "FROM apache/airflow:3.3.2-python3.11"
    copy = [line for line in lines if line.startswith("COPY") and "requirements.txt" in line]
    assert copy, "Dockerfile does not COPY requirements.txt"
    install = [
        i
        for i, line in enumerate(lines)
        if line.startswith("RUN") and re.search(r"pip install\b.*--no-cache-dir.*-r\s+\S*requirements\.txt", line)
    ]
    assert install, "Dockerfile does not pip install -r requirements.txt"
    users = [(i, line.split()[1]) for i, line in enumerate(lines) if line.startswith("USER")]
    active = [user for i, user in users if i < install[0]]
    assert active and active[-1] == "airflow", "requirements must be installed as the airflow user"


def test_the_image_compiles_llama_cpp_for_any_avx2_cpu_not_for_the_build_machine():
    """A -march=native build on the machine that builds the image would die of SIGILL on older CPUs."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    install = next(i for i, line in enumerate(lines) if "-r /opt/airflow/requirements.txt" in line and "pip" in line)
    assert any("CMAKE_ARGS" in line and "-DGGML_NATIVE=OFF" in line for line in lines[:install])
    assert any("build-essential" in line for line in lines[:install])
