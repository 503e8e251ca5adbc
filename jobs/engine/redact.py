"""Keep secrets out of events: mask known secret values and URL passwords."""

import functools
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed

MASK = "********"
# user:password@ in any URL-looking text (amqp://, postgres://, https://, ...)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)

_extra: set[str] = set()


def register_secret(value):
    """Mask this value from now on (config secrets, generated passwords)."""
    if value and len(value) >= 4:
        _extra.add(value)
        _secrets.cache_clear()


@functools.cache
def _secrets():
    found = {settings.SECRET_KEY, *_extra}
    for url in (settings.DATABASE_URL, settings.CELERY_BROKER_URL):
        password = urlsplit(url).password
        if password:
            found.add(password)
    for pair in settings.FLOWER_BASIC_AUTH.split(","):
        if ":" in pair:
            found.add(pair.split(":", 1)[1])
    return sorted((s for s in found if s and len(s) >= 4), key=len, reverse=True)


def redact_text(text):
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(value):
    """A copy of a JSON-like value with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _forget(**kwargs):
    _secrets.cache_clear()


setting_changed.connect(_forget)
