"""Audited changes: every create, update and delete of apps (and their locations), server groups, nodes
and config values.

Model signals write an AuditEntry (who, when, what changed: old and new
values, secrets masked). Who is the actor of the surrounding `acting_as()`:
the admin's middleware sets the signed-in user, management commands the OS
user (or --as); anything else is `system`.

The entries form one hash chain in id order, keyed like the job events
(toppcloud_site/logchain.py): an entry edited or taken out of the middle
breaks it, and the seals (jobs/engine/seal.py) pin its end, so a cut-off tail shows
too. `manage.py jobs verify` checks both. Writers take one lock for the
chain, held until their transaction ends: audited changes are few.
"""

import contextvars
import json
from contextlib import contextmanager
from datetime import timezone as dt_timezone

from django.core.exceptions import ObjectDoesNotExist
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils import timezone

from toppcloud_site.logchain import GENESIS, canonical_json, keyed_hash

MASK = "********"
# Fields whose values an audit entry never shows (a change still shows as changed).
SECRET_FIELDS = {"secret_value", "password", "shared_secret", "previous_shared_secret", "private_key"}
# Bookkeeping, not a change anyone made.
SKIPPED_FIELDS = {"created_at", "updated_at", "facts", "set_up_at"}

# pg_advisory_xact_lock key of the audit chain ("audi"); SQLite's IMMEDIATE transactions serialize writers anyway.
CHAIN_LOCK = 0x61756469

_actor = contextvars.ContextVar("toppcloud_audit_actor", default="system")


@contextmanager
def acting_as(actor):
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor():
    return _actor.get()


def _values(instance):
    values = {}
    for field in instance._meta.concrete_fields:
        if field.primary_key or field.name in SKIPPED_FIELDS:
            continue
        value = getattr(instance, field.attname)
        if field.name in SECRET_FIELDS:
            value = MASK if value else ""
        elif not isinstance(value, (str, int, float, bool, type(None), dict, list)):
            value = str(value)
        values[field.name] = value
    return values


def _remember(sender, instance, raw=False, **kwargs):
    if raw:
        return
    old = sender._default_manager.filter(pk=instance.pk).first() if instance.pk else None
    instance._audit_before = _values(old) if old is not None else None
    # A secret that changed is masked on both sides, so say that it changed.
    instance._audit_secret_changed = old is not None and any(
        getattr(old, f.attname) != getattr(instance, f.attname)
        for f in instance._meta.concrete_fields if f.name in SECRET_FIELDS)


def _saved(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    before, after = getattr(instance, "_audit_before", None) or {}, _values(instance)
    changes = {k: [before.get(k), v] for k, v in after.items() if created or before.get(k) != v}
    for name in SECRET_FIELDS & set(after):
        if getattr(instance, "_audit_secret_changed", False):
            changes[name] = [MASK, MASK + " (changed)"]
    if changes:
        record("create" if created else "update", instance, **changes)


def _deleted(sender, instance, **kwargs):
    record("delete", instance, **{k: [v, None] for k, v in _values(instance).items()})


def record(action, instance, **changes):
    """One audit entry about `instance` by the current actor (also for what is not a change: a reveal)."""
    from toppcloud_site.records.models import AuditEntry

    # Normalised through JSON first, so the stored value is exactly what the hash covers.
    entry = AuditEntry(at=timezone.now(), actor=current_actor(), action=action, model=instance._meta.model_name,
                       object_id=str(instance.pk), object_repr=_repr(instance),
                       changes=json.loads(canonical_json(changes)))
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        entry.prev_hash = AuditEntry.objects.order_by("-id").values_list("hash", flat=True).first() or GENESIS
        entry.hash = entry_hash(entry.prev_hash, entry)
        entry.save(force_insert=True)
    return entry


def entry_hash(prev_hash, entry):
    """The entry's keyed hash on the chain (anything with AuditEntry's fields: migrations pass historical rows)."""
    return keyed_hash(prev_hash, {
        "at": entry.at.astimezone(dt_timezone.utc).isoformat(timespec="microseconds"),
        "actor": entry.actor, "action": entry.action, "model": entry.model, "object_id": entry.object_id,
        "object_repr": entry.object_repr, "changes": entry.changes,
    })


def _repr(instance):
    """str(instance), or its model and id when that names a record deleted with it (a cascade)."""
    try:
        return str(instance)[:200]
    except ObjectDoesNotExist:
        return f"{instance._meta.model_name} {instance.pk}"


def connect(models):
    for model in models:
        pre_save.connect(_remember, sender=model, dispatch_uid=f"audit-pre-{model.__name__}")
        post_save.connect(_saved, sender=model, dispatch_uid=f"audit-post-{model.__name__}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"audit-del-{model.__name__}")


class ActorMiddleware:
    """Requests act as the signed-in user (admin changes are audited under their name)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        actor = f"user:{user.get_username()}" if user is not None and user.is_authenticated else "web"
        with acting_as(actor):
            return self.get_response(request)


def verify_chain(sealed=None):
    """Problems of the audit log's chain and its sealed end; and how many entries were checked.

    sealed: (entry id, hash, seal number) of the last sealed entry (jobs/engine/verify.py read_seals), or None.
    """
    from toppcloud_site.records.models import AuditEntry

    problems, prev, prev_id, count, sealed_seen = [], GENESIS, None, 0, False
    for entry in AuditEntry.objects.order_by("id").iterator(chunk_size=2000):
        count += 1
        if entry.prev_hash != prev:
            before = f"entry {prev_id}'s hash" if prev_id else "the start of the log"
            problems.append(f"audit entry {entry.pk}: prev_hash does not match {before} "
                            "(an entry between them was deleted, or one was edited)")
        if entry_hash(entry.prev_hash, entry) != entry.hash:
            problems.append(f"audit entry {entry.pk} ({entry.action} {entry.model} {entry.object_repr!r}): "
                            "content does not match its hash (edited?)")
        if sealed and entry.pk == sealed[0]:
            sealed_seen = True
            if entry.hash != sealed[1]:
                problems.append(f"audit entry {entry.pk}: its hash is not the one seal {sealed[2]} holds (rewritten)")
        prev, prev_id = entry.hash, entry.pk
    if sealed and not sealed_seen:
        problems.append(f"audit entry {sealed[0]}, sealed by seal {sealed[2]}, is missing "
                        "(deleted, or the log's end was cut off)")
    return problems, count
