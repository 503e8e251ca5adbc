"""System checks for configuration mistakes (`manage.py check --deploy` too)."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Warning, register

BROKER_SCHEMES = {"amqp", "amqps", "pyamqp", "redis", "rediss", "filesystem"}
# What .env.example's secrets say until someone fills them in (tests/test_settings.py checks that every
# value it ships is caught). Anyone can read them there, so production must never run with one.
PLACEHOLDER_MARKS = ("replace-with", "change-me", "changeme")
# Django's own rule for a SECRET_KEY (security.W009, only a warning): task tokens and sessions derive
# from it, so toppcloud refuses a weaker one in production.
SECRET_KEY_MIN_LENGTH, SECRET_KEY_MIN_UNIQUE = 50, 5


def _is_postgresql():
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


@register("toppcloud")  # the tag management commands run (jobs/cli.py: Command.requires_system_checks)
def check_settings(app_configs=None, **kwargs):
    errors = []
    if settings.SECRET_KEY == settings.INSECURE_DEFAULT_SECRET_KEY and _is_postgresql():
        errors.append(Error(
            "SECRET_KEY is not set, but DATABASE_URL points at PostgreSQL (a production setup).",
            hint="Set SECRET_KEY or SECRET_KEY_FILE to at least 50 random characters.",
            id="toppcloud.E001",
        ))
    elif settings.SECRET_KEY != settings.INSECURE_DEFAULT_SECRET_KEY and len(settings.SECRET_KEY) < 32:
        errors.append(Error(
            f"SECRET_KEY is {len(settings.SECRET_KEY)} characters long; it needs at least 32.",
            id="toppcloud.E002",
        ))
    elif not settings.DEBUG and settings.SECRET_KEY != settings.INSECURE_DEFAULT_SECRET_KEY and (
            len(settings.SECRET_KEY) < SECRET_KEY_MIN_LENGTH
            or len(set(settings.SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE
            or settings.SECRET_KEY.startswith("django-insecure-")):
        errors.append(Error(
            f"SECRET_KEY is too weak for production (DEBUG off): {len(settings.SECRET_KEY)} characters, "
            f"{len(set(settings.SECRET_KEY))} different; it needs at least {SECRET_KEY_MIN_LENGTH} characters, "
            f"{SECRET_KEY_MIN_UNIQUE} different, and no 'django-insecure-' prefix.",
            hint="Sessions and the apps' task tokens derive from it. A new one: "
                 "python -c 'import secrets; print(secrets.token_urlsafe(50))'",
            id="toppcloud.E007",
        ))
    if not settings.DEBUG:
        errors += _placeholders()
    scheme = urlsplit(settings.CELERY_BROKER_URL).scheme
    if scheme not in BROKER_SCHEMES:
        errors.append(Error(
            f"CELERY_BROKER_URL has scheme {scheme!r}; toppcloud supports {', '.join(sorted(BROKER_SCHEMES))}.",
            id="toppcloud.E003",
        ))
    if scheme == "filesystem" and _is_postgresql():
        errors.append(Warning(
            "CELERY_BROKER_URL is the embedded filesystem broker while the database is PostgreSQL.",
            hint="Workers on other machines cannot see var/broker; set CELERY_BROKER_URL to RabbitMQ (amqp://...).",
            id="toppcloud.W001",
        ))
    auth = settings.FLOWER_BASIC_AUTH
    if auth and any(":" not in pair or not pair.split(":", 1)[0] or not pair.split(":", 1)[1] for pair in auth.split(",")):
        errors.append(Error(
            "FLOWER_BASIC_AUTH must be user:password (several separated by commas).",
            id="toppcloud.E004",
        ))
    if len(settings.TOPPCLOUD_SSH_CONTROL_DIR) > 60:
        errors.append(Error(
            f"TOPPCLOUD_SSH_CONTROL_DIR is {len(settings.TOPPCLOUD_SSH_CONTROL_DIR)} characters long; "
            "ssh control sockets inside it would pass the 108-byte unix socket limit.",
            hint="Use a short directory such as /tmp/toppcloud-ssh.",
            id="toppcloud.E005",
        ))
    errors += _log_key_errors()
    return errors


def _log_key_errors():
    """The key of the log's hash chains (jobs/engine/seal.py) must come from outside the database in production."""
    key = settings.TOPPCLOUD_LOG_KEY
    if not key and _is_postgresql() and not settings.DEBUG:
        return [Error(
            "TOPPCLOUD_LOG_KEY is not set, but DATABASE_URL points at PostgreSQL and DEBUG is off (a production setup).",
            hint="Set TOPPCLOUD_LOG_KEY or TOPPCLOUD_LOG_KEY_FILE to at least 32 random characters, kept apart "
                 "from the database and its backups (without it, the log's chains fall back to a key file in "
                 "TOPPCLOUD_VAR_DIR).",
            id="toppcloud.E020",
        )]
    if key and len(key) < 32:
        return [Error(f"TOPPCLOUD_LOG_KEY is {len(key)} characters long; it needs at least 32.", id="toppcloud.E021")]
    return []


def _placeholders():
    """toppcloud.E006: a secret still set to .env.example's placeholder (named, its value never shown)."""
    flower = [pair.split(":", 1)[-1] for pair in settings.FLOWER_BASIC_AUTH.split(",")]
    secrets = {
        "SECRET_KEY": [settings.SECRET_KEY],
        "FLOWER_BASIC_AUTH": flower,
        # compose builds these URLs from POSTGRES_PASSWORD and RABBITMQ_PASSWORD
        "DATABASE_URL (its password; POSTGRES_PASSWORD in compose)": [_password(settings.DATABASE_URL)],
        "CELERY_BROKER_URL (its password; RABBITMQ_PASSWORD in compose)": [_password(settings.CELERY_BROKER_URL)],
        "TOPPCLOUD_S3_SECRET_ACCESS_KEY": [settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY],
        "TOPPCLOUD_SECRET_KEYS": settings.TOPPCLOUD_SECRET_KEYS,
        "TOPPCLOUD_LOG_KEY": [settings.TOPPCLOUD_LOG_KEY],
    }
    return [Error(f"{name} is still the placeholder from .env.example; production (DEBUG off) refuses it.",
                  hint="Set it to a secret value of your own (e.g. python -c 'import secrets; "
                       "print(secrets.token_urlsafe(50))').",
                  id="toppcloud.E006")
            for name, values in secrets.items()
            if any(mark in (value or "").lower() for value in values for mark in PLACEHOLDER_MARKS)]


def _password(url):
    try:
        return urlsplit(url).password or ""
    except ValueError:  # an unparsable URL is reported by the settings themselves
        return ""
