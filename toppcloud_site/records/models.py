"""What should be: apps, server groups, nodes, releases and locations.

Field validators reuse nodeops.validate, so the admin, the commands and the
node operations refuse the same inputs with the same words.
"""

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

from nodeops import publish, validate
from toppcloud_site.records.secrets import EncryptedTextField


def _django(check):
    """Turn a nodeops validator (raises ValueError) into a Django validator."""

    def validator(value):
        try:
            check(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    # Migrations refer to validators by module path: name it like the module-level alias.
    validator.__name__ = validator.__qualname__ = check.__name__
    return validator


validate_name = _django(validate.validate_name)
validate_address = _django(validate.validate_address)
validate_port = _django(validate.validate_port)
validate_root = _django(validate.validate_root)
validate_host_key = _django(validate.validate_host_key)
validate_user = _django(validate.validate_user)
validate_location_host = _django(validate.validate_location_host)
validate_url_path = _django(validate.validate_url_path)
validate_destination = _django(publish.validate_destination)


class ServerGroup(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    description = models.TextField(blank=True)
    database_node = models.ForeignKey(
        "Node", null=True, blank=True, on_delete=models.PROTECT, related_name="database_for",
        help_text="Where the group's apps keep their PostgreSQL databases. Empty: on each node an app runs on.")
    # Given to every app of the group as TOPPCLOUD_GROUP_SECRET (made on first use); encrypted at rest.
    shared_secret = EncryptedTextField(blank=True, editable=False)
    # The one before the last rotation, as TOPPCLOUD_GROUP_SECRET_PREVIOUS: apps accept both while
    # the new one reaches each of them.
    previous_shared_secret = EncryptedTextField(blank=True, editable=False)
    # static_publish: deploys of the group's apps copy each release's static files to
    # <static_publish>/<app>/<release>/ before it goes live; $STATIC_URL is then
    # <static_publish_url>/<app>/<release>/ (a CDN in front of that origin).
    static_publish = models.CharField(
        "static files origin", max_length=500, blank=True, validators=[validate_destination],
        help_text="Where deploys copy static files: s3://bucket/prefix, a directory, rsync://host/module/dir "
                  "or user@host:/dir.")
    static_publish_url = models.CharField(
        "static files URL", max_length=500, blank=True, validators=[URLValidator(schemes=["http", "https"])],
        help_text="Where browsers find that origin's files (the CDN), e.g. https://cdn.example.com/static")
    synchronous_replication = models.BooleanField(
        default=False, db_default=False,
        help_text="A write is acknowledged only once a replica has it (synchronous_standby_names on the primary).")
    # The password of the primary's replication role (toppcloud_replication) its replicas log in
    # with (made by the first `replica add`); encrypted at rest, never in an event.
    replication_password = EncryptedTextField(blank=True, default="", db_default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        self.clean_static_publish()
        self.clean_database_node()

    def clean_static_publish(self):
        if bool(self.static_publish) != bool(self.static_publish_url):
            raise ValidationError("static files origin and static files URL are set together or not at all")

    def clean_database_node(self):
        """The database node and the db role agree (records/roles.py): a node of this group is its database
        node exactly when its role is db. (A node outside every group may still be the database node: the
        way groups had one before roles.)"""
        db = self.database_node if self.database_node_id else None
        if db is not None and db.group_id not in (None, self.pk):
            raise ValidationError({"database_node": f"node {db.name} belongs to group {db.group.name}: "
                                                    "a group's database node is one of its own nodes"})
        if db is not None and db.group_id == self.pk and self.pk is not None and db.role != Node.Role.DB:
            raise ValidationError({"database_node": f"node {db.name} has role {db.role} in this group: make it the "
                                                    f"group's db node (`manage.py node set {db.name} --role db`), "
                                                    "which makes it the database node too"})
        if self.pk is not None:
            other = self.nodes.filter(role=Node.Role.DB).exclude(pk=self.database_node_id).first()
            if other is not None:
                raise ValidationError({"database_node": f"node {other.name} is this group's db node: it is the "
                                                        "database node (give it another role first: "
                                                        f"`manage.py node set {other.name} --role app`)"})


class Node(models.Model):
    class Transport(models.TextChoices):
        SSH = "ssh", "SSH"
        LOCAL = "local", "local (this machine, no SSH)"

    class Role(models.TextChoices):
        """What a node does in its server group (docs/groups.md)."""
        APP = "app", "app (runs the group's apps behind its front door)"
        LB = "lb", "lb (the load balancer in front of the group's app nodes)"
        DB = "db", "db (the group's PostgreSQL primary)"
        DB_REPLICA = "db-replica", "db-replica (a streaming replica of the group's primary)"

    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    group = models.ForeignKey(ServerGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="nodes")
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.SSH)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.APP, db_default=Role.APP,
                            help_text="What this node does in its group: app, lb, db or db-replica.")
    address = models.CharField(max_length=253, validators=[validate_address],
                               help_text="IP address or host name the control plane connects to; nginx listens on it.")
    ssh_port = models.PositiveIntegerField(default=22, validators=[validate_port])
    ssh_user = models.CharField(max_length=32, default="root", validators=[validate_user])
    root = models.CharField(max_length=255, default="/srv/toppcloud", validators=[validate_root],
                            help_text="Everything toppcloud puts on the host lives below this directory.")
    http_port = models.PositiveIntegerField(default=80, validators=[validate_port])
    https_port = models.PositiveIntegerField(
        default=443, validators=[validate_port],
        help_text="Where nginx serves HTTPS for the hosts that have a TLS certificate.")
    pg_cluster = models.CharField(
        "PostgreSQL cluster", max_length=63, default="toppcloud", validators=[validate_name],
        help_text="The Debian PostgreSQL cluster (pg_createcluster) holding apps' databases on this node.")
    pg_port = models.PositiveIntegerField("PostgreSQL port", default=5433, validators=[validate_port])
    host_key = models.TextField(blank=True, validators=[validate_host_key],
                                help_text="Pinned SSH host key (`type base64`); connections presenting another key are refused.")
    facts = models.JSONField(default=dict, blank=True, editable=False,
                             help_text="Recorded by the last successful setup job.")
    set_up_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["address", "http_port"], name="records_node_address_http_port_uniq"),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        self.clean_transport()
        self.clean_role()

    def clean_transport(self):
        if self.transport == self.Transport.SSH and not self.host_key:
            raise ValidationError({"host_key": "an SSH node needs a pinned host key; "
                                               "`manage.py node pin-key NAME` scans and pins it"})

    def clean_role(self):
        """A group has at most one lb node and one db node; a db-replica needs a group with a database node;
        the db node is the group's database node (records/roles.py keeps the two together when a role is
        set). ValidationError on the role field, naming the node in the way."""
        role, Role = self.role, self.Role
        group = self.group if self.group_id else None
        if role not in Role.values:
            return  # clean_fields says so (choices)
        if group is None:
            if role != Role.APP:
                raise ValidationError({"role": f"a node with role {role} belongs to a server group: give it one "
                                               "(--group GROUP)"})
            return
        others = Node.objects.filter(group_id=group.pk).exclude(pk=self.pk)
        if role in (Role.LB, Role.DB):
            other = others.filter(role=role).order_by("name").first()
            if other is not None:
                what = "load balancer" if role == Role.LB else "database (primary)"
                raise ValidationError({"role": f"group {group.name} already has its {role} node {other.name}: "
                                               f"a group has at most one {what} node"})
        db_id = ServerGroup.objects.filter(pk=group.pk).values_list("database_node_id", flat=True).first()
        if role == Role.DB and db_id is not None and db_id != self.pk:
            db = Node.objects.filter(pk=db_id).values_list("name", flat=True).first()
            raise ValidationError({"role": f"group {group.name}'s database node is {db}: a group has one primary "
                                           "(`manage.py promote` makes a replica the primary)"})
        if role == Role.DB_REPLICA and db_id is None:
            raise ValidationError({"role": f"a db-replica replicates its group's database node, and group "
                                           f"{group.name} has none: give the group a db node first"})
        if role != Role.DB and db_id is not None and db_id == self.pk:
            kept = list(Service.objects.filter(node_id=self.pk, kind=Service.Kind.POSTGRESQL, app__group_id=group.pk)
                        .order_by("app__name").values_list("app__name", flat=True)[:5])
            if kept:
                raise ValidationError({"role": f"node {self.name} is group {group.name}'s database node and apps "
                                               f"keep their databases on it ({', '.join(kept)}): it stays db "
                                               "(`manage.py promote` makes another node the primary)"})
        if role == Role.DB and self.pk is not None:
            elsewhere = ServerGroup.objects.filter(database_node_id=self.pk).exclude(pk=group.pk).first()
            if elsewhere is not None:
                raise ValidationError({"group": f"node {self.name} is the database node of group {elsewhere.name}: "
                                                "it cannot be the db node of another group"})

    def transport_spec(self, identity_file, control_dir, connect_timeout=10):
        """What nodeops.transport.transport_for needs to reach this node."""
        return {
            "transport": self.transport,
            "name": self.name,
            "address": self.address,
            "ssh_port": self.ssh_port,
            "ssh_user": self.ssh_user,
            "host_key": self.host_key,
            "identity_file": identity_file,
            "control_dir": control_dir,
            "connect_timeout": connect_timeout,
        }


class App(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    group = models.ForeignKey(ServerGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="apps")
    description = models.TextField(blank=True)
    maintenance = models.BooleanField(
        default=False, editable=False,
        help_text="Its locations answer 503 (a maintenance page); set by the disable/enable jobs.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Release(models.Model):
    """One packed app directory: a content-addressed archive and its parsed app.ini."""

    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="releases")
    name = models.CharField(max_length=64, help_text="Release id, also the directory under apps/<app>/releases/.")
    artifact_sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField(default=0, help_text="Archive size in bytes")
    app_ini = models.JSONField(default=dict, help_text="The [production] settings it was packed with")
    version = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["app", "name"], name="records_release_app_name_uniq"),
            # Packing an unchanged directory again finds this release instead of making another.
            models.UniqueConstraint(fields=["app", "artifact_sha256"], name="records_release_app_artifact_uniq"),
        ]

    def __str__(self):
        return f"{self.app.name}@{self.name}"


class Location(models.Model):
    """Where an app is served: a host name and a path prefix."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="locations")
    host = models.CharField(max_length=253, validators=[validate_location_host],
                            help_text="A host name, '*.example.com' (any name below it), or '*' (any other host).")
    path = models.CharField(max_length=200, default="/", validators=[validate_url_path],
                            help_text="A prefix starting and ending with '/', e.g. / or /blog/.")
    balancer_cache = models.BooleanField(
        "cache at the balancer", default=False, db_default=False,
        help_text="The group's load balancer caches answers the app marks public (Cache-Control).")

    class Meta:
        ordering = ["host", "path"]
        constraints = [
            models.UniqueConstraint(fields=["host", "path"], name="records_location_host_path_uniq"),
        ]

    def __str__(self):
        return f"{self.host}{self.path}"

    def canonicalize(self):
        """Apply the one rule for a location (nodeops.validate.validate_location): the host lower-cased,
        without a trailing dot, so what is saved is what the front door renders; ValidationError naming
        the field otherwise."""
        try:
            self.host = validate.validate_location_host(self.host)
        except ValueError as exc:
            raise ValidationError({"host": str(exc)}) from None
        try:
            self.path = validate.validate_url_path(self.path)
        except ValueError as exc:
            raise ValidationError({"path": str(exc)}) from None

    def clean(self):
        # Canonical before validate_unique (which full_clean runs after clean), so "Example.COM" and
        # example.com are one location. A value the rule refuses is reported by the fields' validators.
        try:
            self.canonicalize()
        except ValidationError:
            pass

    def save(self, *args, **kwargs):
        # Every save, not only a form's: no code path can store a location the front door would refuse.
        self.canonicalize()
        super().save(*args, **kwargs)


class Certificate(models.Model):
    """A TLS certificate (chain) and its private key for a host; nginx serves the host over HTTPS with it.

    Written by `manage.py tls add` and the admin (records/tls.py checks it); the key is encrypted at rest.
    """

    host = models.CharField(max_length=253, unique=True, validators=[validate_location_host],
                            help_text="The host it is for: a name or '*.example.com'.")
    certificate = models.TextField(help_text="PEM: the certificate, then its intermediates.")
    private_key = EncryptedTextField(editable=False)
    not_after = models.DateTimeField(null=True, blank=True, editable=False)
    fingerprint = models.CharField(max_length=64, blank=True, editable=False, help_text="SHA-256 of the leaf.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["host"]

    def __str__(self):
        return self.host

    def clean(self):
        if self.host == validate.DEFAULT_HOST:
            raise ValidationError({"host": "a certificate is for a host name or '*.example.com', not '*'"})


class Service(models.Model):
    """A data service of an app (app.ini `service.NAME`), installed where its data lives.

    postgresql: one per app, on the group's database node or the node the
    app runs on; files: one per node the app runs on.
    """

    class Kind(models.TextChoices):
        POSTGRESQL = "postgresql", "PostgreSQL database"
        FILES = "files", "files directory"

    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="services")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="services",
                             help_text="The node that holds the data.")
    settings = models.JSONField(default=dict, editable=False,
                                help_text="Where the data is: cluster, version, port, database and role, or directory.")
    # Generated once, given to the app as CONFIG_PG_PASSWORD; never shown; encrypted at rest.
    password = EncryptedTextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app__name", "kind", "node__name"]
        constraints = [
            models.UniqueConstraint(fields=["app", "kind", "node"], name="records_service_app_kind_node_uniq"),
        ]

    def __str__(self):
        return f"{self.app.name} {self.kind} on {self.node.name}"


class Backup(models.Model):
    """One backup archive of an app's data, stored on the control plane (see docs/data.md)."""

    class Kind(models.TextChoices):
        BACKUP = "backup", "backup"
        CHECKPOINT = "checkpoint", "checkpoint before an update"
        IMPORTED = "imported", "imported archive"

    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="backups")
    name = models.CharField(max_length=150, unique=True, help_text="Also the archive's file name, NAME.tar.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.BACKUP)
    job_id = models.BigIntegerField(null=True, blank=True, help_text="The job that made it.")
    release = models.CharField(max_length=64, blank=True, help_text="The app's live release when it was taken.")
    services = models.JSONField(default=list)
    size = models.PositiveBigIntegerField(default=0)
    manifest_sha256 = models.CharField(
        max_length=64, help_text="Of the archive's manifest.json, which holds the sha256 of every other member.")
    manifest = models.JSONField(default=dict)
    uploaded_to = models.CharField(max_length=500, blank=True, help_text="Remote copy, if one was made.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Retention: the newest backups of an app, per kind.
            models.Index(fields=["app", "kind", "-created_at"], name="records_backup_app_kind_idx"),
        ]
        # An archive is all of an app's data: viewing the list does not hand it out.
        permissions = [("download_backup", "Can download backup archives (all of an app's data)")]

    def __str__(self):
        return self.name


CONFIG_VALUE_MAX = 32 * 1024


def validate_config_key(value):
    if not validate.ENV_KEY_RE.fullmatch(value or ""):
        raise ValidationError(f"{value!r} is not an environment variable name: use letters, digits and '_', "
                              "not starting with a digit, at most 100 characters")
    reserved = validate.reserved_env_name(value)
    if reserved:
        raise ValidationError(reserved)


def validate_config_value(value):
    if "\0" in value:
        raise ValidationError("a config value cannot contain a NUL character")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: what Python makes of bytes that are not UTF-8 (argv, files)
        raise ValidationError("a config value must be UTF-8 text; this one has bytes that are not") from None
    if size > CONFIG_VALUE_MAX:
        raise ValidationError(f"a config value is limited to {CONFIG_VALUE_MAX} bytes; this one has {size}")


class ConfigValue(models.Model):
    """A variable in apps' environments: for every app (global), a server group's apps, or one app.

    An app's value wins over its group's, which wins over the global one.
    Apps see them as environment variables, in web processes, cron runs,
    tasks and commands alike, from their next deploy on.
    """

    class Scope(models.TextChoices):
        GLOBAL = "global", "every app"
        GROUP = "group", "a server group's apps"
        APP = "app", "one app"

    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.APP)
    group = models.ForeignKey(ServerGroup, null=True, blank=True, on_delete=models.CASCADE, related_name="config")
    app = models.ForeignKey(App, null=True, blank=True, on_delete=models.CASCADE, related_name="config")
    key = models.CharField(max_length=100, validators=[validate_config_key])
    secret = models.BooleanField(default=False, help_text="Encrypted at rest, never shown, masked in every event.")
    value = models.TextField(blank=True, validators=[validate_config_value], help_text="A value that is not secret.")
    secret_value = EncryptedTextField(blank=True, editable=False, validators=[validate_config_value])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key", "scope"]
        constraints = [
            models.CheckConstraint(
                name="records_configvalue_scope_target",
                condition=(models.Q(scope="global", group__isnull=True, app__isnull=True)
                           | models.Q(scope="group", group__isnull=False, app__isnull=True)
                           | models.Q(scope="app", group__isnull=True, app__isnull=False))),
            models.UniqueConstraint(fields=["key"], condition=models.Q(scope="global"),
                                    name="records_configvalue_global_key_uniq"),
            models.UniqueConstraint(fields=["group", "key"], condition=models.Q(scope="group"),
                                    name="records_configvalue_group_key_uniq"),
            models.UniqueConstraint(fields=["app", "key"], condition=models.Q(scope="app"),
                                    name="records_configvalue_app_key_uniq"),
        ]

    def __str__(self):
        where = {"global": "global", "group": f"group {self.group}", "app": f"app {self.app}"}[self.scope]
        return f"{self.key} ({where})"

    @property
    def plain(self):
        """The value the app gets."""
        return self.secret_value if self.secret else self.value

    def set_value(self, value, *, secret):
        self.secret = secret
        self.value, self.secret_value = ("", value) if secret else (value, "")

    def clean(self):
        if self.secret and self.value:
            raise ValidationError("a secret keeps its value encrypted: set it with set_value(..., secret=True)")
        need = {self.Scope.GLOBAL: (False, False), self.Scope.GROUP: (True, False), self.Scope.APP: (False, True)}
        group, app = need.get(self.scope, (False, False))
        if group != (self.group_id is not None) or app != (self.app_id is not None):
            raise ValidationError(f"a {self.scope} value names "
                                  + {(False, False): "no group and no app", (True, False): "a group and no app",
                                     (False, True): "an app and no group"}[(group, app)])


class CronEntry(models.Model):
    """An app.ini [cron] entry of the app's live release, and its django-celery-beat schedule.

    Written by deploys and rollbacks (jobs/steps/cron.py); each run is a cron_run job.
    """

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="cron_entries")
    name = models.CharField(max_length=40)
    schedule = models.CharField(max_length=200, help_text="crontab, in UTC")
    target = models.CharField(max_length=2000, help_text="a URL path of the app, or script: COMMAND")
    timeout = models.PositiveIntegerField(help_text="seconds; a run still going then is stopped")
    release = models.CharField(max_length=64, help_text="The live release whose app.ini has this entry.")
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app__name", "name"]
        verbose_name_plural = "cron entries"
        constraints = [models.UniqueConstraint(fields=["app", "name"], name="records_cronentry_app_name_uniq")]

    def __str__(self):
        return f"{self.app.name} {self.name}"


class AuditEntry(models.Model):
    """Who changed which record when, old and new values (secrets masked); written by records/audit.py."""

    at = models.DateTimeField(default=timezone.now, db_index=True)  # set before hashing (audit.record)
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=16)  # create, update, delete, reveal
    model = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict)
    # One keyed hash chain over the whole table in id order (audit.py; `jobs verify` checks it, and the seals its end).
    prev_hash = models.CharField(max_length=64, default="")
    hash = models.CharField(max_length=64, default="")

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["model", "object_id"], name="records_audit_object_idx")]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.model} {self.object_repr}"
