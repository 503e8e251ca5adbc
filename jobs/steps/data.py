"""Apps' data as the control plane sees it: where each service lives, and the backup archives.

The flows (jobs/flows/data.py, and jobs/steps/checkpoints.py) are built from
these steps; nodeops.services does the work on the nodes. See docs/data.md.
"""

import hashlib
import os
import secrets
from collections import namedtuple
from importlib import metadata
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.models import LiveRelease
from jobs.engine.redact import register_secret
from nodeops import appini, services as node_services
from nodeops.hostside import node_data
from nodeops.layout import NodeLayout
from nodeops.hostside.node_data import FILES, SQL, WRITABLE, ArchiveWriter, DataError
from toppcloud_site.records.models import Backup, Node, Service


def toppcloud_version():
    try:
        return metadata.version("toppcloud")
    except metadata.PackageNotFoundError:
        return "unknown"


def database_node(app, node):
    """Where the app's PostgreSQL database lives: its group's database node, else the node it runs on."""
    group = app.group
    return group.database_node if group is not None and group.database_node_id else node


def streaming_replica(app, db_node):
    """The replica of the app's database node its reads may go to: the first (by name) node of its group
    with role db-replica, replica_of that node, that streamed when last checked (jobs/steps/replication.py
    records it); None if there is none."""
    group = app.group
    if group is None:
        return None
    for node in group.nodes.filter(role=Node.Role.DB_REPLICA).order_by("name"):
        facts = node.facts or {}
        if facts.get("replica_of") == db_node.name and (facts.get("replication") or {}).get("state") == "streaming":
            return node
    return None


# --- installing services (a deploy step) ----------------------------------------------

def ensure_services(ctx, app, node, wanted, writable=()):
    """Install the app's data services for a release on `node`, and make its writable static
    directories (app.ini writable_static_files; their $CONFIG_WRITABLE_* come from
    jobs.steps.environment); return (the services' env, changed)."""
    env, changed = {}, False
    if "postgresql" in wanted:
        db_node = database_node(app, node)
        t = ctx.transport(db_node)
        cluster = ensure_cluster(ctx, db_node)
        service = _postgresql_service(app, db_node, cluster["version"])
        done = node_services.ensure_database(t, ctx.emit, _pg_spec(service), service.password)
        changed |= bool(cluster["changed"] or done)
        ctx.emit("service.postgresql", app=app.name, node=db_node.name, changed=cluster["changed"] + done,
                 **service.settings)
        replica = streaming_replica(app, db_node)
        env.update(node_services.service_env(pg=service.settings, host=db_node.address, password=service.password,
                                             replica=(replica.address, replica.pg_port) if replica else None))
        if replica is not None:
            ctx.emit("service.postgresql_replica", app=app.name, node=replica.name, replica_of=db_node.name,
                     port=replica.pg_port)
    if "files" in wanted:
        directory = NodeLayout(node.root).files_dir(app.name)
        Service.objects.update_or_create(app=app, kind=Service.Kind.FILES, node=node,
                                         defaults={"settings": {"dir": directory}})
        done = node_services.ensure_files(ctx.transport(node), ctx.emit, directory)
        changed |= bool(done)
        ctx.emit("service.files", app=app.name, node=node.name, dir=directory, changed=done)
        env.update(node_services.service_env(files_dir=directory))
    if writable:
        spec = node_services.writable_spec(NodeLayout(node.root).writable_dir(app.name), writable)
        done = node_services.ensure_writable(ctx.transport(node), ctx.emit, spec)
        changed |= bool(done)
        ctx.emit("service.writable", app=app.name, node=node.name, changed=done, **spec)
    return env, changed


def ensure_cluster(ctx, db_node):
    """The node's cluster as wanted (its config, its pg_hba): a node set up by an older toppcloud
    is brought over before its apps' data are read or loaded as their own roles."""
    return node_services.ensure_cluster(ctx.transport(db_node), ctx.emit, cluster=db_node.pg_cluster,
                                        port=db_node.pg_port, listen=db_node.address)


def _postgresql_service(app, db_node, version):
    with transaction.atomic():
        service, created = Service.objects.select_for_update().get_or_create(
            app=app, kind=Service.Kind.POSTGRESQL, node=db_node,
            defaults={"password": secrets.token_urlsafe(24)})
        wanted = {"version": version, "port": db_node.pg_port, "cluster": db_node.pg_cluster,
                  "dbname": app.name, "role": app.name}
        if service.settings != wanted:
            service.settings = wanted
            service.save(update_fields=["settings", "updated_at"])
    register_secret(service.password)
    return service


# --- where an app's data is, for backup, restore and clear --------------------------------

# An app's writable static directories on one node, shaped like a Service record (node, settings).
Writable = namedtuple("Writable", "node settings")


def writable_places(app):
    """[Writable] of each node the app is live on with writable_static_files (its live releases' names)."""
    found = {}
    for live in LiveRelease.objects.filter(app=app).select_related("node", "release").order_by("node__name"):
        names = live.release.app_ini.get("writable_static_files") or []  # releases from before it: none
        if names:
            have = found.setdefault(live.node, [])
            have += [n for n in names if n not in have]
    return [Writable(node, node_services.writable_spec(NodeLayout(node.root).writable_dir(app.name), names))
            for node, names in found.items()]


class DataPlace:
    """The data of one app to back up or restore: PostgreSQL on one node, files on one node, the
    writable static directories on one node (one where a release with writable_static_files is live)."""

    def __init__(self, app, node=None):
        self.app = app
        pg = list(Service.objects.filter(app=app, kind=Service.Kind.POSTGRESQL).select_related("node"))
        files = list(Service.objects.filter(app=app, kind=Service.Kind.FILES).select_related("node"))
        writable = writable_places(app)
        if not pg and not files and not writable:
            raise FlowFailed(f"{app.name} has no data: its app.ini asks for neither service.postgresql nor "
                             "service.files nor writable_static_files, or it is live nowhere")
        self.pg = _pick(app, pg, node, "postgresql")
        self.files = _pick(app, files, node, "files")
        self.writable = _pick(app, writable, node, "writable static files")
        if self.pg:
            register_secret(self.pg.password)
        self._cluster_ensured = False
        self.pg_replica = None  # a backup reads the database from this replica (read_from_replica)

    def read_from_replica(self, ctx):
        """Dump the database from a streaming replica of its node (hot standby), not from the primary;
        the replica. FlowFailed if the app has no database or it has no streaming replica."""
        if not self.pg:
            raise FlowFailed(f"{self.app.name} has no PostgreSQL database to read from a replica")
        replica = streaming_replica(self.app, self.pg.node)
        if replica is None:
            raise FlowFailed(f"the database of {self.app.name} (on {self.pg.node.name}) has no streaming replica "
                             "to back up from: add one with `manage.py replica add NODE --group GROUP`, or back "
                             "up from the primary (without --from-replica)")
        self.pg_replica = replica
        ctx.emit("backup.from_replica", app=self.app.name, node=replica.name, primary=self.pg.node.name,
                 **{k: v for k, v in (replica.facts.get("replication") or {}).items() if k.startswith("lag_")})
        return replica

    def pg_source(self):
        """(the node the database is dumped on, its spec there): the primary's, or its replica's."""
        if self.pg_replica is not None:
            return self.pg_replica, {**_pg_spec(self.pg), "port": self.pg_replica.pg_port}
        return self.pg.node, _pg_spec(self.pg)

    def ensure_cluster(self, ctx):
        """Once per place: the database node's pg_hba lets the app's role in (see ensure_cluster)."""
        if self.pg and not self._cluster_ensured:
            ensure_cluster(ctx, self.pg.node)
            self._cluster_ensured = True

    @property
    def services(self):
        return [s for s, v in (("postgresql", self.pg), ("files", self.files), ("writable", self.writable)) if v]

    def nodes(self):
        return sorted({s.node.name for s in (self.pg, self.files, self.writable) if s})

    def specs_by_node(self, services):
        """{node: {"postgresql": spec, "files": spec, "gate": path}} for these services, as the node
        program takes them; gate: where the app's requests on that node wait during the swap."""
        found = {}
        if "postgresql" in services:
            found.setdefault(self.pg.node, {})["postgresql"] = _pg_spec(self.pg)
        if "files" in services:
            found.setdefault(self.files.node, {})["files"] = self.files.settings
        if "writable" in services:
            found.setdefault(self.writable.node, {})["writable"] = self.writable.settings
        for node, specs in found.items():
            specs["gate"] = NodeLayout(node.root).request_gate(self.app.name)
        return found

    def release(self):
        node = (self.files or self.writable or self.pg).node
        live = LiveRelease.objects.filter(app=self.app, node=node).select_related("release").first()
        return live.release.name if live else ""


def _pick(app, found, node, kind):
    if node is not None:
        on_node = [s for s in found if s.node.pk == node.pk]
        if on_node:
            return on_node[0]
        if kind != "postgresql" or len(found) != 1:
            return None  # the files of another node are not this node's
        return found[0]  # the one database (the group's database node)
    if len(found) > 1:
        raise FlowFailed(f"{app.name} has {kind} on {len(found)} nodes "
                         f"({', '.join(s.node.name for s in found)}); say which with --node")
    return found[0] if found else None


# --- archives on the control plane -------------------------------------------------------

def backup_dir(app_name):
    path = Path(settings.TOPPCLOUD_BACKUP_DIR) / app_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def archive_path(backup):
    return backup_dir(backup.app.name) / f"{backup.name}.tar"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(node_data.CHUNK):
            h.update(chunk)
    return h.hexdigest()


def take_backup(ctx, place, kind, label=None):
    """Dump the app's services into a new archive here and record it as a Backup."""
    app = place.app
    name = f"{app.name}-{timezone.now():%Y%m%d-%H%M%S}-{label or kind}-j{ctx.job_id}"
    final = backup_dir(app.name) / f"{name}.tar"
    part = final.with_name(f".{name}.tar.part")
    place.ensure_cluster(ctx)
    try:
        with open(part, "wb") as f:
            writer = ArchiveWriter(f)
            dumps = []
            if place.pg:
                pg_node, pg_spec = place.pg_source()
                dumps.append((ctx.transport(pg_node), SQL, pg_spec))
            if place.files:
                dumps.append((ctx.transport(place.files.node), FILES, place.files.settings))
            if place.writable:
                dumps.append((ctx.transport(place.writable.node), WRITABLE, place.writable.settings))
            node_services.dump_into(ctx.emit, writer, dumps, password=place.pg.password if place.pg else None)
            manifest = writer.finish(app=app.name, release=place.release(), created_at=timezone.now().isoformat(),
                                     toppcloud_version=toppcloud_version(), services=place.services)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    backup = Backup.objects.create(app=app, name=name, kind=kind, job_id=ctx.job_id, release=manifest["release"],
                                   services=manifest["services"], size=final.stat().st_size,
                                   manifest_sha256=hashlib.sha256(node_data.manifest_bytes(manifest)).hexdigest(),
                                   manifest=manifest)
    ctx.emit("backup.created", backup=name, backup_kind=kind, size=backup.size,
             manifest_sha256=backup.manifest_sha256, services=backup.services, release=backup.release)
    return backup


def _pg_spec(service):
    return {k: service.settings[k] for k in ("version", "port", "dbname", "role")}


def verify_backup(ctx, backup):
    """The stored archive is the one recorded: its size and its manifest, whose checksums the
    node then checks every member against before it swaps anything in. Its manifest."""
    path = archive_path(backup)
    if not path.exists():
        raise FlowFailed(f"the archive of backup {backup.name} is missing from {path}; nothing was changed")
    try:
        manifest_data, sizes = node_data.read_manifest(path)
        if hashlib.sha256(manifest_data).hexdigest() != backup.manifest_sha256:
            raise DataError(f"its manifest.json is not the one recorded (sha256 {backup.manifest_sha256[:16]}...)")
        manifest = backup.manifest
        recorded = {name: info["size"] for name, info in manifest["files"].items()}
        if sizes != recorded:
            raise DataError(f"its members and sizes {sizes} are not the ones recorded {recorded}")
        if path.stat().st_size != backup.size:
            raise DataError(f"the archive is {path.stat().st_size} bytes; {backup.size} were recorded")
    except DataError as exc:
        raise FlowFailed(f"backup {backup.name} is corrupted: {exc}; nothing was changed") from None
    ctx.emit("backup.verified", backup=backup.name, manifest_sha256=backup.manifest_sha256,
             services=manifest["services"])
    return manifest


def restore_backup(ctx, backup, place, manifest):
    """Swap the archive's data in for the app's, node by node; each swap all-or-nothing."""
    path = archive_path(backup)
    wanted = [s for s in manifest["services"] if s in place.services]
    missing = [s for s in manifest["services"] if s not in place.services]
    if missing:
        key = "writable_static_files" if missing[0] == "writable" else f"service.{missing[0]}"
        raise FlowFailed(f"backup {backup.name} holds {' and '.join(missing)} but {place.app.name} has no such "
                         f"service; add {key} to its app.ini and deploy it first")
    if not wanted:
        raise FlowFailed(f"backup {backup.name} holds no data of a service {place.app.name} has")
    place.ensure_cluster(ctx)
    done = {}
    for node, specs in place.specs_by_node(wanted).items():
        password = place.pg.password if "postgresql" in specs else None  # the database loads as the app's role
        result = node_services.restore(ctx.transport(node), ctx.emit, path, tmp=NodeLayout(node.root).tmp,
                                       password=password, **specs)
        done[node.name] = result["staged"]
    return done


def clear_data(ctx, place):
    for node, specs in place.specs_by_node(place.services).items():
        node_services.clear(ctx.transport(node), ctx.emit, **specs)


def prune_backups(ctx, app, kind, keep):
    """Keep the newest `keep` backups of this kind; delete the older records and their archives."""
    old = list(Backup.objects.filter(app=app, kind=kind).order_by("-created_at", "-pk")[keep:])
    for backup in old:
        archive_path(backup).unlink(missing_ok=True)
        backup.delete()
    if old:
        ctx.emit("backup.pruned", backup_kind=kind, keep=keep, removed=[b.name for b in old])
    return [b.name for b in old]


def keep_backups(app):
    """app.ini keep_backups of the app's newest release (10 if it has none)."""
    release = app.releases.order_by("-created_at").first()
    return (release.app_ini.get("keep_backups") if release else None) or 10


# --- for the commands and the admin: refused before any job exists ------------------------

class DataRefused(ValueError):
    pass


def check_data_app(name):
    """The app, if it has data services to act on."""
    from toppcloud_site.records.models import App

    app = App.objects.filter(name=name).first()
    if app is None:
        raise DataRefused(f"there is no app {name!r}")
    if not Service.objects.filter(app=app).exists() and not writable_places(app):
        raise DataRefused(f"{name} has no data services yet: deploy it with service.postgresql, service.files "
                          "or writable_static_files in its app.ini first")
    return app


def check_replica_source(app):
    """Refuse a backup --from-replica of an app whose database has no streaming replica (as last recorded)."""
    service = Service.objects.filter(app=app, kind=Service.Kind.POSTGRESQL).select_related("node").first()
    if service is None:
        raise DataRefused(f"{app.name} has no PostgreSQL database: --from-replica reads one from a replica")
    if streaming_replica(app, service.node) is None:
        raise DataRefused(f"the database of {app.name} (on {service.node.name}) has no streaming replica: add one "
                          "with `manage.py replica add NODE --group GROUP`, or leave out --from-replica")


def find_backup(name):
    backup = Backup.objects.select_related("app").filter(name=name).first()
    if backup is None:
        recent = ", ".join(Backup.objects.values_list("name", flat=True)[:5]) or "none yet"
        raise DataRefused(f"there is no backup {name!r} (newest: {recent})")
    return backup


def import_archive(path, app):
    """An archive file from elsewhere, checked whole, stored as a Backup of `app` (once per content)."""
    if not os.path.isfile(path):
        raise DataRefused(f"{path} is neither a backup name nor an archive file")
    try:
        manifest = node_data.verify_archive(path)
    except DataError as exc:
        raise DataRefused(f"{path} cannot be restored: {exc}; nothing was changed") from None
    manifest_sha = hashlib.sha256(node_data.read_manifest(path)[0]).hexdigest()
    existing = Backup.objects.filter(app=app, manifest_sha256=manifest_sha).first()
    if existing is not None and archive_path(existing).exists():
        return existing
    sha = sha256_file(path)
    name = f"{app.name}-{timezone.now():%Y%m%d-%H%M%S}-imported-{sha[:8]}"
    final = backup_dir(app.name) / f"{name}.tar"
    part = final.with_name(f".{name}.tar.part")
    try:
        with open(path, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(node_data.CHUNK):
                dst.write(chunk)
        if sha256_file(part) != sha:
            raise DataRefused(f"{path} changed while it was being imported; nothing was changed")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    return Backup.objects.create(app=app, name=name, kind=Backup.Kind.IMPORTED, release=manifest.get("release", ""),
                                 services=manifest["services"], size=final.stat().st_size,
                                 manifest_sha256=manifest_sha, manifest=manifest)


SCHEDULE_TASK = "jobs.submit_backup"


def schedule_backups(app, cron):
    """A django-celery-beat entry that starts a backup job of `app` on this crontab ('' removes it)."""
    import json

    from django_celery_beat.models import PeriodicTask

    from jobs.steps.cron import crontab_schedule

    name = f"backup {app.name}"
    if not cron:
        return PeriodicTask.objects.filter(name=name).delete()[0] > 0
    try:
        _, fields = appini.parse_schedule(cron, what=f"backups of {app.name}:")
    except ValueError as exc:
        raise DataRefused(str(exc)) from None
    schedule = crontab_schedule(fields)
    task, _ = PeriodicTask.objects.update_or_create(
        name=name, defaults={"task": SCHEDULE_TASK, "crontab": schedule, "interval": None,
                             "kwargs": json.dumps({"app": app.name}), "enabled": True})
    return task
