"""The keyed hash that chains the job event log and the audit log.

Each entry's hash is HMAC-SHA256(key, prev_hash + canonical_json(fields)).
The key is TOPPCLOUD_LOG_KEY, kept outside the database, so someone who can
rewrite rows (even with the append-only triggers disabled) cannot recompute a
chain that verifies. Unset (the embedded default, DEBUG): a key made in
$TOPPCLOUD_VAR_DIR/log.key; production must set it (check toppcloud.E020).

Events written before the key existed carry plain sha256 hashes; which ones
may do so is fixed once, by the cut-over seal (jobs/engine/seal.py), so a new event
cannot be "downgraded" to plain sha256.
"""

import functools
import hashlib
import hmac
import json
import secrets as random_secrets

from django.conf import settings
from django.core.signals import setting_changed

GENESIS = "0" * 64


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@functools.cache
def log_key():
    if settings.TOPPCLOUD_LOG_KEY:
        return settings.TOPPCLOUD_LOG_KEY.encode()
    from toppcloud_site.records.secrets import key_file

    return key_file("log.key", lambda: random_secrets.token_urlsafe(48)).encode()


def keyed_hash(prev_hash, fields):
    return hmac.new(log_key(), (prev_hash + canonical_json(fields)).encode(), hashlib.sha256).hexdigest()


def plain_hash(prev_hash, fields):
    """The unkeyed hash of events written before jobs migration 0007 (accepted only where the cut-over seal says)."""
    return hashlib.sha256((prev_hash + canonical_json(fields)).encode()).hexdigest()


def _forget(setting, **kwargs):
    if setting in ("TOPPCLOUD_LOG_KEY", "VAR_DIR"):
        log_key.cache_clear()


setting_changed.connect(_forget)
