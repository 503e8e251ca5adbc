"""Group documents: a server group as TOML text to keep in version control (export_group, import_group).

    [group]        name, description, database_node, synchronous_replication, secrets (names only),
                   and [group.config]
    [nodes.NAME]   where and how the control plane reaches each node of the group, and its role
                   (app, lb, db, db-replica)
    [apps.NAME]    description, locations ("host/path"), balancer_cache (those of its locations the
                   group's balancer caches), secrets (names only), and [apps.NAME.config]

A document written before roles existed still imports: a node without a role
is the group's db node if it is the document's database_node, an app node
otherwise; synchronous_replication is false and no location is cached.

The document is the whole group: importing it makes the records say what it
says. Apps and nodes it leaves out are taken out of the group (never
deleted: they may have releases and data); config values it leaves out are
removed. Secrets appear by name only: their values never leave the control
plane. A secret the document names but the control plane does not have is
reported, to be set with `manage.py config set KEY --secret`.

Export is deterministic (everything sorted, one form for each value), so
export, import, export gives the same bytes. Import checks the whole
document before it changes anything and applies it in one transaction, as
audited changes; a document with anything wrong changes nothing.
"""

import tomllib
from dataclasses import dataclass, field

import tomli_w
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from nodeops import validate
from toppcloud_site.records import roles
from toppcloud_site.records.models import App, ConfigValue, Location, Node, ServerGroup

MAX_BYTES = 1 << 20  # a group document larger than this is refused unread
MAX_STRING = 64 * 1024  # no text in it is longer (config values have their own, lower limit)
HEADER = ("# toppcloud server group document: `manage.py import_group FILE` makes the group match it.\n"
          "# Secrets are listed by name only; their values stay in the control plane.\n")

# Node fields a document holds, with their TOML types; the rest (facts, set-up time) is bookkeeping.
NODE_FIELDS = {"address": str, "transport": str, "ssh_port": int, "ssh_user": str, "root": str, "http_port": int,
               "https_port": int, "pg_cluster": str, "pg_port": int, "host_key": str, "role": str}
# Group fields a document holds as they are (strings); database_node and config have their own forms.
GROUP_FIELDS = ("description", "static_publish", "static_publish_url")
# Group fields that are true or false (absent: false).
GROUP_FLAGS = ("synchronous_replication",)


class DocumentError(ValueError):
    """The document cannot be imported; nothing was changed."""


# --- export -------------------------------------------------------------------------------------------

def export_group(group):
    """The group as document text."""
    doc = {"group": {"name": group.name, **{name: getattr(group, name) for name in GROUP_FIELDS},
                     **{name: getattr(group, name) for name in GROUP_FLAGS},
                     "database_node": group.database_node.name if group.database_node_id else "",
                     **_config_tables(ConfigValue.objects.filter(scope="group", group=group))}}
    doc["nodes"] = {node.name: {name: getattr(node, name) for name in NODE_FIELDS}
                    for node in group.nodes.order_by("name")}
    doc["apps"] = {app.name: {"description": app.description,
                              "locations": sorted(f"{loc.host}{loc.path}" for loc in app.locations.all()),
                              "balancer_cache": sorted(f"{loc.host}{loc.path}" for loc in app.locations.all()
                                                       if loc.balancer_cache),
                              **_config_tables(ConfigValue.objects.filter(scope="app", app=app))}
                   for app in group.apps.order_by("name").prefetch_related("locations")}
    return HEADER + tomli_w.dumps(doc)


def _config_tables(values):
    values = sorted(values, key=lambda v: v.key)
    return {"secrets": [v.key for v in values if v.secret],
            "config": {v.key: v.value for v in values if not v.secret}}


# --- reading and checking -----------------------------------------------------------------------------

@dataclass
class Scope:
    """What the document says one config scope (the group, or one app) has."""
    config: dict = field(default_factory=dict)
    secrets: list = field(default_factory=list)


def parse(data: bytes):
    """The document's contents, every key and type checked (DocumentError names the first problem)."""
    if len(data) > MAX_BYTES:
        raise DocumentError(f"the document has {len(data)} bytes; a group document is limited to {MAX_BYTES}")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DocumentError(f"the document is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DocumentError(f"the document is not valid TOML: {exc}") from None
    _no_nul(doc, "the document")
    _keys(doc, "the document", required={"group"}, allowed={"group", "nodes", "apps"})
    group = _table(doc, "group", "the document")
    _keys(group, "[group]", required={"name"},
          allowed={"name", *GROUP_FIELDS, *GROUP_FLAGS, "database_node", "secrets", "config"})
    nodes = _table(doc, "nodes", "the document", default={})
    apps = _table(doc, "apps", "the document", default={})
    parsed = {
        "name": _string(group, "name", "[group]"),
        **{name: _string(group, name, "[group]", default="") for name in GROUP_FIELDS},
        **{name: _typed(group, name, bool, "[group]", default=False) for name in GROUP_FLAGS},
        "database_node": _string(group, "database_node", "[group]", default=""),
        "config": _scope(group, "[group]"),
        "nodes": {},
        "apps": {},
    }
    for name, node in nodes.items():
        where = f"[nodes.{name}]"
        if not isinstance(node, dict):
            raise DocumentError(f"{where} must be a table of node fields")
        _keys(node, where, required={"address"}, allowed=set(NODE_FIELDS))
        parsed["nodes"][name] = {key: _typed(node, key, kind, where) for key, kind in NODE_FIELDS.items()
                                 if key in node}
        if "role" not in node:  # a document from before roles
            parsed["nodes"][name]["role"] = Node.Role.DB if name == parsed["database_node"] else Node.Role.APP
    for name, app in apps.items():
        where = f"[apps.{name}]"
        if not isinstance(app, dict):
            raise DocumentError(f"{where} must be a table of app fields")
        _keys(app, where, allowed={"description", "locations", "balancer_cache", "secrets", "config"})
        locations = app.get("locations", [])
        if not isinstance(locations, list) or not all(isinstance(loc, str) for loc in locations):
            raise DocumentError(f"{where} locations must be a list of \"host/path\" strings")
        cached = app.get("balancer_cache", [])
        if not isinstance(cached, list) or not all(isinstance(loc, str) for loc in cached):
            raise DocumentError(f"{where} balancer_cache must be a list of \"host/path\" strings, "
                                "each one of its locations")
        parsed["apps"][name] = {"description": _string(app, "description", where, default=""),
                                "locations": [_location(loc, where) for loc in locations],
                                "balancer_cache": [_location(loc, where) for loc in cached],
                                "config": _scope(app, where)}
        strays = [f"{h}{p}" for h, p in parsed["apps"][name]["balancer_cache"]
                  if (h, p) not in parsed["apps"][name]["locations"]]
        if strays:
            raise DocumentError(f"{where} balancer_cache names {', '.join(strays)}, which is not one of its locations")
    return parsed


def _no_nul(value, where):
    """TOML allows "\u0000"; no name or text of a record may hold it (PostgreSQL refuses it)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if "\0" in key:
                raise DocumentError(f"{where} has a key with a NUL character: {key!r}"[:300])
            _no_nul(item, f"{key} in {where}" if where != "the document" else f"[{key}]")
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, where)
    elif isinstance(value, str) and "\0" in value:
        raise DocumentError(f"{where} contains a NUL character: {value[:100]!r}")


def _keys(table, where, *, required=frozenset(), allowed):
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DocumentError(f"{where} has unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    missing = sorted(set(required) - set(table))
    if missing:
        raise DocumentError(f"{where} lacks {', '.join(missing)}")


def _table(doc, key, where, default=None):
    value = doc.get(key, default)
    if not isinstance(value, dict):
        raise DocumentError(f"{key} in {where} must be a table, not {type(value).__name__}")
    return value


def _typed(table, key, kind, where, default=None):
    value = table.get(key, default)
    if kind is bool and not isinstance(value, bool):
        raise DocumentError(f"{key} in {where} must be true or false, not {value!r}"[:300])
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DocumentError(f"{key} in {where} must be a whole number, not {value!r}"[:300])
    if kind is str:
        if not isinstance(value, str):
            raise DocumentError(f"{key} in {where} must be a string, not {type(value).__name__}")
        if len(value) > MAX_STRING:
            raise DocumentError(f"{key} in {where} has {len(value)} characters; at most {MAX_STRING} are allowed")
    return value


def _string(table, key, where, default=None):
    return _typed(table, key, str, where, default)


def _scope(table, where):
    config = table.get("config", {})
    if not isinstance(config, dict):
        raise DocumentError(f"config in {where} must be a table of KEY = \"value\"")
    for key, value in config.items():
        _string(config, key, f"{where} config")
    secrets = table.get("secrets", [])
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        raise DocumentError(f"secrets in {where} must be a list of config key names")
    both = sorted(set(secrets) & set(config))
    if both:
        raise DocumentError(f"{where} names {', '.join(both)} both as a secret and with a value")
    if len(set(secrets)) != len(secrets):
        raise DocumentError(f"secrets in {where} names a key twice")
    return Scope(config=dict(config), secrets=list(secrets))


def _location(text, where):
    if len(text) > 500 or "/" not in text:
        raise DocumentError(f"location {text[:100]!r} in {where} must be \"host/path\", like example.com/ "
                            "or example.com/blog/")
    host, slash, path = text.partition("/")
    try:  # the one rule for a location, canonical (lower-case host), so it compares with the records
        return validate.validate_location(host, slash + path)
    except ValueError as exc:
        raise DocumentError(f"location {text[:100]!r} in {where}: {exc}") from None


# --- comparing and applying ---------------------------------------------------------------------------

def plan(doc):
    """What importing `doc` would change, as apply() returns it (no changes: it matches); nothing is saved."""
    return _apply(doc, dry_run=True)


def apply(doc):
    """Make the records match `doc`, in one transaction; (the changes as lines for a person to read, secrets
    the document names that are not set, the ids of apps whose locations changed: their nodes' front doors
    need rendering, the ids of groups whose lb node came, went or gained or lost nodes: their nodes' front
    doors need rendering too, for whom they trust). Any invalid value (or clash with another group's records)
    raises DocumentError, changing nothing."""
    return _apply(doc, dry_run=False)


class _DryRun(Exception):
    pass


def _apply(doc, *, dry_run):
    changes, rerouted, retrusted = [], set(), set()
    try:
        with transaction.atomic():
            missing = _Importer(doc, changes, rerouted, retrusted).run()
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    except ValidationError as exc:
        raise DocumentError(_message(exc)) from None
    except IntegrityError as exc:
        raise DocumentError(f"the document clashes with records outside it: {exc}".strip()) from None
    return changes, missing, sorted(rerouted), sorted(retrusted)


def _message(exc):
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


class _Importer:
    """Walks the document, saving what differs (each save an audit entry) and noting it in `changes`."""

    def __init__(self, doc, changes, rerouted, retrusted):
        self.doc, self.changes, self.rerouted, self.retrusted = doc, changes, rerouted, retrusted

    def note(self, line):
        self.changes.append(line)

    def save(self, obj, what):
        try:
            obj.full_clean()
        except ValidationError as exc:
            raise ValidationError(f"{what}: {_message(exc)}") from None
        obj.save()

    def save_node(self, node, what):
        """A node's own fields checked, its role by check_roles once every node and the database node are as
        the document says (one at a time, moving the lb from one node to another would clash with itself)."""
        try:
            node.clean_fields()
            node.clean_transport()
            node.validate_unique()
            node.validate_constraints()
        except ValidationError as exc:
            raise ValidationError(f"{what}: {_message(exc)}") from None
        node.save()

    def check_roles(self, group):
        for node in Node.objects.filter(group=group).select_related("group").order_by("name"):
            try:
                node.clean_role()
            except ValidationError as exc:
                raise ValidationError(f"node {node.name}: {_message(exc)}") from None
        group.refresh_from_db()
        try:
            group.clean_database_node()
        except ValidationError as exc:
            raise ValidationError(f"group {group.name}: {_message(exc)}") from None

    def run(self):
        doc = self.doc
        group = ServerGroup.objects.filter(name=doc["name"]).first()
        if group is None:
            group = ServerGroup(name=doc["name"])
            self.note(f"+ group {doc['name']}")
        changed = [name for name in (*GROUP_FIELDS, *GROUP_FLAGS) if getattr(group, name) != doc[name]]
        if changed or group.pk is None:
            if group.pk is not None:
                for name in changed:
                    self.note(f"~ group {group.name}: {name} {getattr(group, name)!r} -> {doc[name]!r}")
            for name in (*GROUP_FIELDS, *GROUP_FLAGS):
                setattr(group, name, doc[name])
            try:  # the database node is checked against the roles once the nodes are saved (check_roles)
                group.clean_fields()
                group.clean_static_publish()
                group.validate_unique()
            except ValidationError as exc:
                raise ValidationError(f"group {doc['name']}: {_message(exc)}") from None
            group.save()
        nodes = self.nodes(group)
        self.database_node(group, nodes)
        self.check_roles(group)
        missing = self.config(f"group {group.name}", {"scope": "group", "group": group}, doc["config"])
        for name, spec in sorted(doc["apps"].items()):
            missing += self.app(group, name, spec)
        for app in App.objects.filter(group=group).exclude(name__in=doc["apps"]).order_by("name"):
            self.note(f"- app {app.name} leaves the group (the app itself is kept)")
            app.group = None
            app.save()
        return missing

    def nodes(self, group):
        nodes = {}
        for name, spec in sorted(self.doc["nodes"].items()):
            node = Node.objects.filter(name=name).first()
            wanted = {**{key: Node._meta.get_field(key).get_default() for key in NODE_FIELDS}, **spec}
            if node is None:
                node = Node(name=name, group=group, **wanted)
                self.note(f"+ node {name} ({wanted['address']}, role {wanted['role']})")
                self.retrusted |= roles.affected_groups(roles.NOWHERE, (group.pk, node.role, node.address))
            else:
                self.retrusted |= roles.affected_groups(roles.placement(node),
                                                        (group.pk, wanted["role"], wanted["address"]))
                diffs = [f"{key} {getattr(node, key)!r} -> {value!r}" for key, value in wanted.items()
                         if getattr(node, key) != value]
                if node.group_id != group.pk:
                    diffs.insert(0, f"group {node.group.name if node.group_id else '(none)'} -> {group.name}")
                if not diffs:
                    nodes[name] = node
                    continue
                self.note(f"~ node {name}: " + "; ".join(diffs))
                node.group = group
                for key, value in wanted.items():
                    setattr(node, key, value)
            self.save_node(node, f"node {name}")
            nodes[name] = node
        for node in Node.objects.filter(group=group).exclude(name__in=self.doc["nodes"]).order_by("name"):
            self.note(f"- node {node.name} leaves the group (the node itself is kept)"
                      + (f"; its role {node.role} -> app" if node.role != Node.Role.APP else ""))
            self.retrusted |= roles.affected_groups(roles.placement(node), roles.NOWHERE)
            node.group, node.role = None, Node.Role.APP
            node.save()
        return nodes

    def database_node(self, group, nodes):
        name = self.doc["database_node"]
        wanted = None
        if name:
            wanted = nodes.get(name) or Node.objects.filter(name=name).first()
            if wanted is None:
                raise ValidationError(f"database_node {name!r} is no node of the document or the control plane")
        if group.database_node_id != (wanted.pk if wanted else None):
            self.note(f"~ group {group.name}: database_node "
                      f"{group.database_node.name if group.database_node_id else '(none)'} -> {name or '(none)'}")
            group.database_node = wanted
            self.save(group, f"group {group.name}")

    def app(self, group, name, spec):
        app = App.objects.filter(name=name).first()
        if app is None:
            app = App(name=name, group=group, description=spec["description"])
            self.note(f"+ app {name}")
            self.save(app, f"app {name}")
        elif app.group_id != group.pk or app.description != spec["description"]:
            diffs = []
            if app.group_id != group.pk:
                diffs.append(f"group {app.group.name if app.group_id else '(none)'} -> {group.name}")
            if app.description != spec["description"]:
                diffs.append(f"description {app.description!r} -> {spec['description']!r}")
            self.note(f"~ app {name}: " + "; ".join(diffs))
            app.group, app.description = group, spec["description"]
            self.save(app, f"app {name}")
        self.locations(app, spec["locations"], spec["balancer_cache"])
        return self.config(f"app {name}", {"scope": "app", "app": app}, spec["config"])

    def locations(self, app, wanted, cached):
        have = {(loc.host, loc.path): loc for loc in app.locations.all()}
        cached = set(cached)
        if set(have) != set(wanted):
            self.rerouted.add(app.pk)
        for key in sorted(set(have) - set(wanted)):
            self.note(f"- app {app.name}: location {key[0]}{key[1]}")
            have[key].delete()
        for key in sorted(set(have) & set(wanted)):
            loc = have[key]
            if loc.balancer_cache != (key in cached):
                self.note(f"~ app {app.name}: location {key[0]}{key[1]} balancer_cache "
                          f"{loc.balancer_cache} -> {key in cached}")
                loc.balancer_cache = key in cached
                self.rerouted.add(app.pk)  # its front_door job renders the group's balancer too
                self.save(loc, f"location {key[0]}{key[1]} of app {app.name}")
        for host, path in sorted(set(wanted) - set(have)):
            self.note(f"+ app {app.name}: location {host}{path}" + (" (cached at the balancer)"
                                                                     if (host, path) in cached else ""))
            if Location.objects.filter(host=host, path=path).exclude(app=app).exists():
                raise ValidationError(f"location {host}{path} of app {app.name} belongs to another app")
            self.save(Location(app=app, host=host, path=path, balancer_cache=(host, path) in cached),
                      f"location {host}{path} of app {app.name}")

    def config(self, where, scope, wanted):
        have = {v.key: v for v in ConfigValue.objects.filter(**scope)}
        for key in sorted(set(have) - set(wanted.config) - set(wanted.secrets)):
            self.note(f"- config {where}: {key}")
            have[key].delete()
        for key, value in sorted(wanted.config.items()):
            record = have.get(key)
            if record is not None and not record.secret and record.value == value:
                continue
            self.note(f"{'~' if record else '+'} config {where}: {key} = {value!r}"
                      + (" (was a secret)" if record is not None and record.secret else ""))
            record = record or ConfigValue(key=key, **scope)
            record.set_value(value, secret=False)
            self.save(record, f"config {key} of {where}")
        missing = []
        for key in wanted.secrets:
            record = have.get(key)
            if record is None:
                missing.append(f"{key} ({where})")
            elif not record.secret:
                raise ValidationError(f"config {key} of {where} is named as a secret but is set as a plain value "
                                      f"here: make it a secret with `manage.py config set {key} --secret` first")
        return missing
