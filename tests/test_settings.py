"""Settings from the environment: bad values refused, mistakes as system checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k" * 50


def check(tmp_path, **env):
    """Run `manage.py check` as production would, with only these variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "CELERY", "SECRET", "DEBUG",
                                                                       "FLOWER", "JOBS_", "TOPPCLOUD_"))}
    base.update({"DJANGO_SETTINGS_MODULE": "toppcloud_site.settings", "TOPPCLOUD_VAR_DIR": str(tmp_path),
                 "PYTHONPATH": str(ROOT)}, **env)
    proc = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env=base, cwd=ROOT,
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
