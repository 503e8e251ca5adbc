"""What should be: apps, server groups, nodes, releases and locations.

Field validators reuse nodeops.validate, so the admin, the commands and the
node operations refuse the same inputs with the same words.
"""

from django.core.exceptions import ValidationError
from django.db import models

from nodeops import validate


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


class ServerGroup(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Node(models.Model):
    class Transport(models.TextChoices):
        SSH = "ssh", "SSH"
        LOCAL = "local", "local (this machine, no SSH)"

    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    group = models.ForeignKey(ServerGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="nodes")
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.SSH)
    address = models.CharField(max_length=253, validators=[validate_address],
                               help_text="IP address or host name the control plane connects to; nginx listens on it.")
    ssh_port = models.PositiveIntegerField(default=22, validators=[validate_port])
    ssh_user = models.CharField(max_length=32, default="root", validators=[validate_user])
    root = models.CharField(max_length=255, default="/srv/toppcloud", validators=[validate_root],
                            help_text="Everything toppcloud puts on the host lives below this directory.")
    http_port = models.PositiveIntegerField(default=80, validators=[validate_port])
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
        if self.transport == self.Transport.SSH and not self.host_key:
            raise ValidationError({"host_key": "an SSH node needs a pinned host key; "
                                               "`manage.py node pin-key NAME` scans and pins it"})

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
    host = models.CharField(max_length=253, validators=[validate_address])
    path = models.CharField(max_length=200, default="/")

    class Meta:
        ordering = ["host", "path"]
        constraints = [
            models.UniqueConstraint(fields=["host", "path"], name="records_location_host_path_uniq"),
        ]

    def __str__(self):
        return f"{self.host}{self.path}"

    def clean(self):
        try:
            validate.validate_url_path(self.path)
        except ValueError as exc:
            raise ValidationError({"path": str(exc)}) from None
