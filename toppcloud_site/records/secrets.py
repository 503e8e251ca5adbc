"""Secrets at rest: Fernet (cryptography) under the keys of TOPPCLOUD_SECRET_KEYS.

The first key encrypts; every key listed decrypts, so a key is rotated by
putting a new one first, running `manage.py secrets rotate` (which
re-encrypts every stored secret with it), then dropping the old one.
Encryption is per field (EncryptedTextField): plain in Python, a Fernet
token in the database. With
nothing set, the key lives in $TOPPCLOUD_VAR_DIR/secret.key (made on first
use, 0600): fine for the embedded default; production sets the variable.
"""

import functools
import os
import tempfile

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import models


class SecretUnreadable(ValueError):
    """A stored secret that none of the keys decrypts."""


def generate_key():
    return Fernet.generate_key().decode()


def key_file(name, make):
    """The key in VAR_DIR/<name>, made by make() whole or not at all (web, worker and beat may start at once)."""
    path = os.path.join(settings.VAR_DIR, name)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.")  # 0600
        with os.fdopen(fd, "w") as f:
            f.write(make() + "\n")
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs is the key
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()


def _key_file():
    return [key_file("secret.key", generate_key)]


@functools.cache
def _fernet():
    keys = settings.TOPPCLOUD_SECRET_KEYS or _key_file()
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise ImproperlyConfigured("TOPPCLOUD_SECRET_KEYS must be Fernet keys (32 url-safe base64-encoded "
                                   "bytes each, comma-separated); `manage.py secrets new-key` prints one") from None


def encrypt(text):
    return _fernet().encrypt(text.encode()).decode()


def decrypt(token):
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("a stored secret cannot be decrypted with any key of TOPPCLOUD_SECRET_KEYS "
                               "(was a key dropped before `manage.py secrets rotate`?)") from None


class EncryptedTextField(models.TextField):
    """Text that is encrypted in the database and plain in Python ("" and None stay as they are)."""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return encrypt(value) if value else value

    def from_db_value(self, value, expression, connection):
        return decrypt(value) if value else value


def _forget(setting, **kwargs):
    if setting in ("TOPPCLOUD_SECRET_KEYS", "VAR_DIR"):
        _fernet.cache_clear()


setting_changed.connect(_forget)
