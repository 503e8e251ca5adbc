"""Settings from the environment: bad values refused, mistakes as system checks."""

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k3y-of-fifty-characters-for-the-settings-tests-0123"


def check(tmp_path, *command, **env):
    """Run `manage.py check` (or another command) as production would, with only these variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "CELERY", "SECRET", "DEBUG",
                                                                       "FLOWER", "JOBS_", "TOPPCLOUD_"))}
    base.update({"DJANGO_SETTINGS_MODULE": "toppcloud_site.settings", "TOPPCLOUD_VAR_DIR": str(tmp_path),
                 "PYTHONPATH": str(ROOT)}, **env)
    proc = subprocess.run([sys.executable, str(ROOT / "manage.py"), *(command or ["check"])], env=base, cwd=ROOT,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_it_starts_with_nothing_set_as_the_embedded_default(tmp_path):
    code, out = check(tmp_path)
    assert code == 0, out
    assert "no issues" in out
    assert (tmp_path / "broker" / "queue").is_dir()


@pytest.mark.parametrize("env, message", [
    ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean: use true or false"),
    ({"JOBS_MAX_ATTEMPTS": "three"}, "JOBS_MAX_ATTEMPTS='three' is not a whole number"),
    ({"JOBS_MAX_ATTEMPTS": "0"}, "JOBS_MAX_ATTEMPTS=0 is outside 1..20"),
    ({"JOBS_LEASE_SECONDS": "-1"}, "JOBS_LEASE_SECONDS=-1.0 is below 1.0"),
    ({"SECRET_KEY": GOOD_KEY, "SECRET_KEY_FILE": "/etc/hostname"}, "set SECRET_KEY or SECRET_KEY_FILE, not both"),
    ({"SECRET_KEY_FILE": "/nonexistent/key"}, "SECRET_KEY_FILE='/nonexistent/key' cannot be read"),
    ({"DATABASE_URL": "nonsense://x"}, "DATABASE_URL cannot be parsed"),
    ({"DATABASE_URL": "mysql://u@127.0.0.1/x"}, "DATABASE_URL selects django.db.backends.mysql; toppcloud runs on"),
    ({"TOPPCLOUD_S3_ENDPOINT_URL": "minio:9000"}, "TOPPCLOUD_S3_ENDPOINT_URL='minio:9000' is not an http(s)://host"),
])
def test_it_refuses_a_value_it_cannot_read(tmp_path, env, message):
    code, out = check(tmp_path, **env)
    assert code != 0 and message in out


@pytest.mark.parametrize("env, check_id, words", [
    ({"DATABASE_URL": "postgres://u@127.0.0.1/x"}, "toppcloud.E001", "SECRET_KEY is not set"),
    ({"SECRET_KEY": "short"}, "toppcloud.E002", "SECRET_KEY is 5 characters long"),
    ({"CELERY_BROKER_URL": "sqs://x"}, "toppcloud.E003", "CELERY_BROKER_URL has scheme 'sqs'"),
    ({"DATABASE_URL": "postgres://u@127.0.0.1/x", "SECRET_KEY": GOOD_KEY}, "toppcloud.W001",
     "filesystem broker while the database is PostgreSQL"),
    ({"FLOWER_BASIC_AUTH": "adminonly"}, "toppcloud.E004", "FLOWER_BASIC_AUTH must be user:password"),
    ({"TOPPCLOUD_SSH_CONTROL_DIR": "/tmp/" + "d" * 70}, "toppcloud.E005", "unix socket limit"),
    ({"DATABASE_URL": "postgres://u@127.0.0.1/x", "SECRET_KEY": GOOD_KEY}, "toppcloud.E020",
     "TOPPCLOUD_LOG_KEY is not set"),
    ({"TOPPCLOUD_LOG_KEY": "short"}, "toppcloud.E021", "TOPPCLOUD_LOG_KEY is 5 characters long"),
])
def test_it_reports_each_mistake_as_a_system_check(tmp_path, env, check_id, words):
    code, out = check(tmp_path, **env)
    assert check_id in out and words in out, out
    if check_id.startswith("toppcloud.E"):
        assert code != 0


def test_it_reads_a_secret_from_a_file(tmp_path):
    key = tmp_path / "secret"
    key.write_text(GOOD_KEY + "\n")
    log_key = tmp_path / "log-key"
    log_key.write_text("l" * 40 + "\n")
    code, out = check(tmp_path, SECRET_KEY_FILE=str(key), DATABASE_URL="postgres://u@127.0.0.1/x",
                      CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1//", TOPPCLOUD_LOG_KEY_FILE=str(log_key))
    assert code == 0 and "E001" not in out and "E020" not in out, out


def test_it_lets_debug_run_without_a_log_key(tmp_path):
    code, out = check(tmp_path, DATABASE_URL="postgres://u@127.0.0.1/x", SECRET_KEY=GOOD_KEY, DEBUG="true",
                      CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1//")
    assert code == 0 and "E020" not in out, out


def test_the_models_and_their_migrations_agree(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "manage.py"), "makemigrations", "--check", "--dry-run"],
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "toppcloud_site.settings",
                               "TOPPCLOUD_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def env_example():
    """.env.example's NAME=value lines (not the commented-out ones)."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"[A-Z][A-Z0-9_]*=", line))


def compose_urls(example):
    """DATABASE_URL and CELERY_BROKER_URL as docker-compose.yml builds them from .env.example."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-toppcloud"]["environment"]
    return {name: re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: example[m[1]], compose[name])
            for name in ("DATABASE_URL", "CELERY_BROKER_URL")}


def test_it_refuses_each_placeholder_of_env_example_in_production(tmp_path):
    example = env_example()
    placeholders = {"SECRET_KEY": example["SECRET_KEY"], "FLOWER_BASIC_AUTH": example["FLOWER_BASIC_AUTH"],
                    **compose_urls(example)}
    assert "replace-with" in placeholders["SECRET_KEY"] and "change-me" in placeholders["FLOWER_BASIC_AUTH"]
    for name, value in placeholders.items():
        code, out = check(tmp_path, **{"SECRET_KEY": GOOD_KEY, name: value, "DEBUG": "false"})
        assert code == 1 and "toppcloud.E006" in out and f"{name}" in out, (name, out)
        assert value not in out and (urlsplit(value).password or value) not in out  # named, never shown
    code, out = check(tmp_path, **placeholders, DEBUG="false")  # all at once: each is named
    assert code == 1 and out.count("toppcloud.E006") == 4, out
    code, out = check(tmp_path, SECRET_KEY=example["SECRET_KEY"], FLOWER_BASIC_AUTH="admin:change-me", DEBUG="true")
    assert code == 0 and "E006" not in out, out  # a developer's machine may keep them


@pytest.mark.parametrize("key, words", [
    ("abcd" * 13, "52 characters, 4 different"),
    ("x0-" * 15, "45 characters, 3 different"),
    ("a-forty-character-key-but-50-are-needed!", "40 characters"),
    ("django-insecure-" + "q1w2e3r4t5y6u7i8o9p0" * 2, "no 'django-insecure-' prefix"),
])
def test_it_refuses_a_weak_secret_key_in_production_only(tmp_path, key, words):
    code, out = check(tmp_path, SECRET_KEY=key, DEBUG="false")
    assert code == 1 and "toppcloud.E007" in out and words in out and key not in out, out
    code, out = check(tmp_path, SECRET_KEY=key, DEBUG="true")
    assert code == 0 and "E007" not in out, out


def test_composes_migrate_service_runs_the_checks_and_stops_on_a_placeholder(tmp_path):
    """compose starts web, workers and beat only after migrate succeeded: migrate must refuse."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    argv = services["migrate"]["command"]
    assert argv[:3] == ["python", "manage.py", "migrate"] and "--skip-checks" not in argv
    assert "FLOWER_BASIC_AUTH" in services["migrate"]["environment"]
    code, out = check(tmp_path, *argv[2:], SECRET_KEY=GOOD_KEY, FLOWER_BASIC_AUTH=env_example()["FLOWER_BASIC_AUTH"])
    assert code == 1 and "toppcloud.E006" in out and "FLOWER_BASIC_AUTH" in out, out
    assert not (tmp_path / "toppcloud.sqlite3").exists() or "Applying" not in out
    code, out = check(tmp_path, *argv[2:], SECRET_KEY=GOOD_KEY, FLOWER_BASIC_AUTH="admin:s3cret-of-my-own")
    assert code == 0 and "Applying records.0001_initial" in out, out
