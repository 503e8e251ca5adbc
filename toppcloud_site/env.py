"""Typed readers for settings taken from the environment.

Each reader refuses a value it cannot parse with ImproperlyConfigured naming
the variable, so a typo stops the process at start instead of being read as a
default. Secrets also accept NAME_FILE (a path whose content is the value),
the form docker and systemd credentials use.

Every name read is recorded in READ, so a test can check that
docker-compose.yml and .env.example name only variables that exist.
"""

import os

from django.core.exceptions import ImproperlyConfigured

READ: dict[str, str] = {}  # name -> kind, filled as settings are read

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _raw(name, kind):
    READ[name] = kind
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name, default=""):
    value = _raw(name, "str")
    return default if value is None else value


def env_bool(name, default):
    value = _raw(name, "bool")
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false")


def env_int(name, default, minimum=None, maximum=None):
    value = _raw(name, "int")
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name}={number} is outside {minimum}..{maximum}")
    return number


def env_float(name, default, minimum=0.0):
    value = _raw(name, "float")
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below {minimum}")
    return number


def env_list(name, default=()):
    value = _raw(name, "list")
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name, default=""):
    """NAME, or the content of the file NAME_FILE names (not both)."""
    value = _raw(name, "secret")
    path = _raw(name + "_FILE", "path")
    if value is not None and path is not None:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
    return default if value is None else value
