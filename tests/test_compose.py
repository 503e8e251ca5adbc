"""docker-compose.yml and .env.example agree with the settings.

No Docker engine runs here, so the file is checked by reading it: every
service, command, port, healthcheck and variable.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from toppcloud_site import env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
TOPPCLOUD_SERVICES = ["migrate", "web", "worker", "cron-worker", "beat", "flower"]
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"}


def example_vars():
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            names.add(match[1])
    return names


def command(service):
    cmd = SERVICES[service]["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def option(argv, name):
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_it_has_every_service_with_a_healthcheck_or_a_one_shot():
    assert set(SERVICES) == {"postgres", "rabbitmq", "migrate", "web", "worker", "cron-worker", "beat", "flower"}
    for name, service in SERVICES.items():
        if name == "migrate":
            assert service["restart"] == "no"
        else:
            assert service["healthcheck"]["test"], name


def test_it_passes_only_variables_the_settings_read():
    for name in TOPPCLOUD_SERVICES:
        unknown = set(SERVICES[name]["environment"]) - set(env.READ)
        assert not unknown, f"{name} sets variables toppcloud never reads: {unknown}"


def test_it_points_the_apps_at_the_bundled_postgresql_and_rabbitmq():
    environment = SERVICES["web"]["environment"]
    assert environment["DATABASE_URL"].startswith("postgres://toppcloud:")
    assert environment["DATABASE_URL"].endswith("@postgres:5432/" + SERVICES["postgres"]["environment"]["POSTGRES_DB"])
    assert environment["CELERY_BROKER_URL"].startswith("amqp://toppcloud:")
    assert environment["CELERY_BROKER_URL"].endswith("@rabbitmq:5672/"
                                                     + SERVICES["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_VHOST"])
    for name in TOPPCLOUD_SERVICES:
        assert "${SECRET_KEY:?" in SERVICES[name]["environment"]["SECRET_KEY"], name
        deps = SERVICES[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["rabbitmq"]["condition"] == "service_healthy"
    for name in ["web", "worker", "cron-worker", "beat", "flower"]:
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_it_runs_workers_on_every_queue_the_settings_declare_cron_on_its_own():
    from jobs.engine.registry import KINDS
    from toppcloud_site.celery import app

    queues = {}
    for name in ["worker", "cron-worker"]:
        argv = command(name)
        assert argv[:4] == ["celery", "-A", "toppcloud_site", "worker"], name
        assert "-E" in argv, name  # task events for Flower
        queues[name] = set(option(argv, "-Q").split(","))
    assert queues == {"worker": {q.name for q in app.conf.task_queues} - {"cron"}, "cron-worker": {"cron"}}
    assert KINDS["cron_run"].queue == "cron" and app.amqp.router.route({}, "jobs.submit_cron")["queue"].name == "cron"
    node = option(command("cron-worker"), "-n").split("@")[0]
    assert f"-d {node}@$$HOSTNAME" in " ".join(SERVICES["cron-worker"]["healthcheck"]["test"])


def test_it_runs_beat_with_the_database_scheduler():
    assert option(command("beat"), "--scheduler") == settings.CELERY_BEAT_SCHEDULER


def test_it_serves_web_and_flower_on_the_ports_it_publishes():
    web = command("web")
    assert web[:2] == ["gunicorn", settings.WSGI_APPLICATION.rsplit(".", 1)[0]]
    bind_port = option(web, "--bind").rsplit(":", 1)[1]
    assert SERVICES["web"]["ports"] == [f"{bind_port}:{bind_port}"]
    assert f":{bind_port}/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])
    flower_port = option(command("flower"), "--port")
    assert SERVICES["flower"]["ports"] == [f"{flower_port}:{flower_port}"]
    assert "FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]


def test_it_requires_the_log_key_and_shares_the_seal_file_with_every_service():
    for name in TOPPCLOUD_SERVICES:
        environment = SERVICES[name]["environment"]
        assert "${TOPPCLOUD_LOG_KEY:?" in environment["TOPPCLOUD_LOG_KEY"], name
        seal_dir = environment["TOPPCLOUD_LOG_SEAL_FILE"].rsplit("/", 1)[0]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[name]["volumes"]}
        assert mounts.get(seal_dir) == "toppcloud-seals", name
    assert "toppcloud-seals" not in {v.split(":")[0] for v in SERVICES["postgres"].get("volumes", [])}


def test_it_declares_every_named_volume():
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert used == set(COMPOSE["volumes"])


def test_env_example_lists_every_variable():
    listed = example_vars()
    readable = {name for name, kind in env.READ.items() if kind != "path"}  # not the NAME_FILE variants
    assert readable - listed == set(), "missing from .env.example"
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert used - listed == set(), "compose uses variables .env.example does not list"
    assert listed - readable - COMPOSE_ONLY == set(), ".env.example lists variables nothing reads"


@pytest.mark.parametrize("path", ["Dockerfile"])
def test_the_image_has_what_the_commands_need(path):
    text = (ROOT / path).read_text()
    assert "openssh-client" in text and "rsync" in text and "collectstatic" in text
