"""The records' admin pages whose actions and edits start jobs: server groups (secret rotation), nodes
(setup, ping, front door), apps (rollback, backup, config apply, disable, enable; location edits render
the front door; the App page's deploy / roll back buttons and logs; deploying an uploaded archive), releases
(deploy), locations, backups (download, restore) and cron entries (run now).
Each action calls jobs/actions.py; admin URLs, action names and permissions are the records' own."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from jobs import actions, dashboard, uploads
from jobs.flows.logs import LOG_FILES
from jobs.steps.environment import ConfigMissing, check_required_config
from jobs.steps import balancer as lb_steps
from jobs.steps.releases import ReleaseRefused, group_warning
from jobs.steps.data import DataRefused, archive_path, check_data_app
from jobs.steps.failover import PromoteRefused
from jobs.steps.replication import ReplicaRefused, describe as describe_replica, replica_row
from jobs.engine.states import ActorKind
from jobs.models import Job, LiveRelease
from jobs.nodes import InvalidNode, check_node
from nodeops.appini import AppIniError
from nodeops.archive import ArchiveError
from toppcloud_site.records import audit, roles
from toppcloud_site.records.admin import LocationForm, LocationInline, ServiceInline, masked_value
from toppcloud_site.records.models import (
    App, Backup, ConfigValue, CronEntry, Location, Node, Release, ServerGroup)


def _started(modeladmin, request, verb, started):
    """Tell the admin which jobs an action queued, each linked to its timeline."""
    if started:
        links = format_html_join(", ", '<a href="{}">{}</a>', [
            (reverse("admin:jobs_job_change", args=[job.pk]), f"job {job.pk} ({label})") for job, label in started])
        modeladmin.message_user(request, format_html("{} started: {}", verb, links), messages.SUCCESS)


def _front_door_after_edit(modeladmin, request, app_ids):
    """Edited locations take effect now: a front_door job for the nodes serving these apps."""
    job = actions.front_door_after_edit(app_ids, actor_kind=ActorKind.USER, actor=request.user.get_username())
    if job is None:
        modeladmin.message_user(request, "The app is not live on any node yet: its locations are served from its "
                                         "first deploy.", messages.INFO)
    else:
        _started(modeladmin, request, "Front door", [(job, ", ".join(job.params["nodes"]))])


@admin.register(ServerGroup)
class ServerGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "node_count", "app_count", "database_node", "lb", "synchronous_replication",
                    "created_at"]
    list_filter = ["synchronous_replication"]
    search_fields = ["name", "description"]
    actions = ["rotate_shared_secret", "check_replicas"]

    @admin.action(description="Check the replicas (state, lag) and apply synchronous replication as set",
                  permissions=["change"])
    def check_replicas(self, request, queryset):
        started = []
        for group in queryset:
            try:
                job = actions.replica_check(group.name, actor_kind=ActorKind.USER, actor=request.user.get_username())
            except (ReplicaRefused, InvalidNode) as exc:
                self.message_user(request, f"No check was started: {exc}", messages.ERROR)
                continue
            started.append((job, group.name))
        _started(self, request, "Replica check", started)

    @admin.action(description="Rotate the shared secret (TOPPCLOUD_GROUP_SECRET) and apply it to the group's apps",
                  permissions=["change"])
    def rotate_shared_secret(self, request, queryset):
        _started(self, request, "Rotation", [
            (actions.rotate_group_secret(group.name, actor_kind=ActorKind.USER, actor=request.user.get_username()),
             group.name) for group in queryset])

    @admin.display(description="nodes")
    def node_count(self, obj):
        return obj.nodes.count()

    @admin.display(description="apps")
    def app_count(self, obj):
        return obj.apps.count()

    @admin.display(description="load balancer")
    def lb(self, obj):
        return ", ".join(n.name for n in obj.nodes.all() if n.role == Node.Role.LB) or "-"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("nodes")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "role", "transport", "endpoint", "root", "http_port", "set_up_at", "os"]
    list_filter = ["role", "group", "transport"]
    search_fields = ["name", "address", "root"]
    readonly_fields = ["replication", "facts", "set_up_at", "created_at"]
    actions = ["set_up_nodes", "ping_nodes", "render_front_door", "add_as_replica", "promote_to_primary"]

    def save_model(self, request, obj, form, change):
        """The form checked the role (Node.clean_role); saved, the group's database node follows the db role
        and, when an lb node came, went or a node moved, the group's front doors are rendered again
        (toppcloud_site/records/roles.py)."""
        before = (Node.objects.filter(pk=obj.pk).values_list("group_id", "role", "address").first() if change
                  else None) or roles.NOWHERE
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            roles.sync_database_node(obj)
        affected = roles.affected_groups(before, roles.placement(obj))
        if affected:
            job = actions.front_door_after_roles(affected, actor_kind=ActorKind.USER,
                                                 actor=request.user.get_username())
            if job is not None:
                _started(self, request, "Front door (forwarded-header trust)", [(job, ", ".join(job.params["nodes"]))])

    @admin.display(description="replication")
    def replication(self, obj):
        """A replica's state and lag as the last replica add (or check) recorded them; an old primary a
        promote fenced, as a replica to be."""
        if not (obj.facts or {}).get("replica_of") and not (obj.facts or {}).get("fenced"):
            return "not a replica"
        return describe_replica(replica_row(obj))

    @admin.display(description="ssh", ordering="address")
    def endpoint(self, obj):
        if obj.transport == Node.Transport.LOCAL:
            return "local"
        return f"{obj.ssh_user}@{obj.address}:{obj.ssh_port}"

    @admin.display(description="OS")
    def os(self, obj):
        return obj.facts.get("os", "") if obj.facts else ""

    def _start(self, request, queryset, kind, verb):
        started = []
        for node in queryset:
            try:
                job = actions.node_job(kind, node, actor_kind=ActorKind.USER, actor=request.user.get_username())
            except InvalidNode as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            started.append((job, node.name))
        _started(self, request, verb, started)

    @admin.action(description="Set up node", permissions=["change"])
    def set_up_nodes(self, request, queryset):
        self._start(request, queryset, "setup_node", "Setup")

    @admin.action(description="Ping node", permissions=["view"])
    def ping_nodes(self, request, queryset):
        self._start(request, queryset, "ping_node", "Ping")

    @admin.action(description="Add as a streaming replica of its group's primary", permissions=["change"])
    def add_as_replica(self, request, queryset):
        started = []
        for node in queryset.select_related("group"):
            try:
                job = actions.replica_add(node.name, node.group.name if node.group_id else "",
                                          actor_kind=ActorKind.USER, actor=request.user.get_username())
            except (ReplicaRefused, InvalidNode) as exc:
                self.message_user(request, f"No replica was added: {exc}", messages.ERROR)
                continue
            started.append((job, node.name))
        _started(self, request, "Replica add", started)

    @admin.action(description="Promote to its group's primary (the old primary fenced; apps repointed)",
                  permissions=["change"])
    def promote_to_primary(self, request, queryset):
        """One replica only: a group has one primary. An old primary that does not answer fails the job
        here; `manage.py promote NODE --old-primary-is-down` is the way past it, on purpose not a click."""
        nodes = list(queryset.select_related("group", "group__database_node"))
        if len(nodes) != 1:
            self.message_user(request, "Promote one replica at a time: a group has one primary.", messages.ERROR)
            return
        try:
            job = actions.promote(nodes[0], actor_kind=ActorKind.USER, actor=request.user.get_username())
        except (PromoteRefused, InvalidNode) as exc:
            self.message_user(request, f"Nothing was promoted: {exc}", messages.ERROR)
            return
        _started(self, request, "Promote", [(job, nodes[0].name)])

    @admin.action(description="Render the front door (nginx) from the records now", permissions=["change"])
    def render_front_door(self, request, queryset):
        nodes = list(queryset.order_by("name"))
        job = actions.front_door(nodes, actor_kind=ActorKind.USER, actor=request.user.get_username())
        _started(self, request, "Front door", [(job, ", ".join(n.name for n in nodes))])


class LiveInline(admin.TabularInline):
    """What is live where: the projection of release.activated events, read-only."""

    model = LiveRelease
    verbose_name_plural = "live now (from release.activated events)"
    fields = ["node", "host", "path", "release", "port", "job_link", "activated_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="job")
    def job_link(self, obj):
        return format_html('<a href="{}">job {}</a>', reverse("admin:jobs_job_change", args=[obj.job_id]), obj.job_id)


class UploadForm(forms.Form):
    """An app archive and where to deploy it: nodes, or every node of a group."""

    archive = forms.FileField(help_text=f"a {uploads.ARCHIVE_KINDS} of the app directory (app.ini at its top, "
                                        "or in its one top directory), as manage.py deploy APP_DIR packs it")
    nodes = forms.ModelMultipleChoiceField(queryset=Node.objects.order_by("name"), required=False,
                                           widget=forms.CheckboxSelectMultiple)
    group = forms.ModelChoiceField(queryset=ServerGroup.objects.order_by("name"), required=False,
                                   help_text="or every node of this server group (one with an lb node: its app nodes, "
                                             "rolled through the balancer one at a time)", empty_label="(no group)")
    max_parallel = forms.IntegerField(min_value=1, max_value=100, initial=4, help_text="nodes deployed at once")

    def clean(self):
        data = super().clean()
        nodes = list(data.get("nodes") or [])
        group = data.get("group")
        if group is not None:
            if nodes and lb_steps.lb_node(group) is not None:
                raise forms.ValidationError(f"server group {group.name} has an lb node: a deploy to it rolls through "
                                            f"its app nodes; pick the group without nodes")
            # A group's apps run on its app nodes (not on its lb, db or db-replica nodes), as manage.py deploy.
            nodes += [n for n in lb_steps.app_nodes(group) if n not in nodes]
            if not nodes:
                raise forms.ValidationError(f"server group {group.name!r} has no app nodes")
        if not nodes and not self.errors:
            raise forms.ValidationError("say where: pick nodes, or a server group")
        data["targets"] = nodes
        return data


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    """The App page shows its releases (deploy one, roll back to one), recent jobs, backups, cron entries
    with their last runs, config keys (secret values never) and its logs; the list page deploys an archive."""

    list_display = ["name", "group", "locations_list", "live_list", "maintenance", "created_at"]
    list_filter = ["group", "maintenance"]
    search_fields = ["name", "description", "locations__host"]
    inlines = [LocationInline, LiveInline, ServiceInline]
    actions = ["roll_back", "back_up", "apply_config", "disable", "enable"]
    readonly_fields = ["maintenance"]  # the Disable / Enable actions: jobs that render the front door too
    change_form_template = "admin/records/app/app_change_form.html"
    change_list_template = "admin/records/app/app_change_list.html"
    SHOWN_RELEASES, SHOWN_JOBS, SHOWN_BACKUPS = 15, 15, 10

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("upload/", view(self.upload_view), name="records_app_upload"),
            path("<int:pk>/release/", view(require_POST(self.release_view)), name="records_app_release"),
            path("<int:pk>/logs/", view(require_POST(self.logs_view)), name="records_app_logs"),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        app = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if app is not None:
            extra["panels"] = self.panels(request, app)
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def panels(self, request, app):
        """What the App page shows above its record's form."""
        lives = list(app.live.select_related("node", "release").order_by("node__name", "host", "path"))
        live_on = {}
        for live in lives:
            live_on.setdefault(live.release_id, set()).add(live.node.name)
        releases = list(app.releases.order_by("-created_at", "-id")[:self.SHOWN_RELEASES])
        for release in releases:
            release.live_on = sorted(live_on.get(release.pk, ()))
        entries = list(app.cron_entries.select_related("app", "periodic_task__crontab").order_by("name"))
        last_runs = dashboard.cron_last_runs(entries)
        for entry in entries:
            entry.last_job = last_runs.get(entry.pk)
            task = entry.periodic_task
            entry.next_run = dashboard.next_run(task.crontab, timezone.now()) if task and task.crontab else None
        user = request.user
        may_see_config = user.has_perm("records.view_configvalue")
        config = list(ConfigValue.objects.filter(Q(app=app) | Q(scope="group", group_id=app.group_id)
                                                 | Q(scope="global")).select_related("group").order_by("key", "scope")
                      ) if may_see_config else None
        return {
            "lives": lives, "releases": releases, "release_count": app.releases.count(),
            "nodes": list(Node.objects.order_by("name")), "live_nodes": sorted({live.node.name for live in lives}),
            "jobs": list(Job.objects.filter(Q(target=f"app:{app.name}") | Q(target__startswith=f"app:{app.name}@")
                                            | Q(target__startswith=f"cron:{app.name}:")
                                            | Q(target__startswith=f"task:{app.name}/"))
                         .order_by("-queued_at", "-id")[:self.SHOWN_JOBS]),
            "backups": list(app.backups.order_by("-created_at", "-id")[:self.SHOWN_BACKUPS]),
            "cron": entries,
            "config": None if config is None else [{"key": c.key, "scope": c.scope, "secret": c.secret,
                                                    "group": c.group, "shown": masked_value(c)} for c in config],
            "log_files": LOG_FILES,
            "logs_jobs_url": reverse("admin:jobs_job_changelist") + f"?kind__exact=logs&q=app%3A{app.name}",
            "can_change": self.has_change_permission(request, app),
        }

    def release_view(self, request, pk):
        """The App page's buttons: deploy this release to a node, or roll back to it there."""
        app = get_object_or_404(App, pk=pk)
        back = reverse("admin:records_app_change", args=[app.pk])
        if not self.has_change_permission(request, app):
            raise PermissionDenied(f"deploying or rolling back {app.name} needs permission to change apps")
        release = Release.objects.filter(app=app, pk=request.POST.get("release")).first()
        node = Node.objects.filter(pk=request.POST.get("node")).first()
        what = request.POST.get("do")
        if release is None or node is None or what not in ("deploy", "rollback"):
            self.message_user(request, "choose a release of this app, a node, and deploy or roll back",
                              messages.ERROR)
            return HttpResponseRedirect(back)
        actor = request.user.get_username()
        try:
            if what == "deploy":
                check_required_config(app, release)
                job = actions.deploy(app.name, release.name, node, actor_kind=ActorKind.USER, actor=actor)
            else:
                job = actions.rollback(app.name, node, release=release.name, actor_kind=ActorKind.USER, actor=actor)
        except (InvalidNode, ConfigMissing) as exc:
            self.message_user(request, f"nothing was started: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        verb = "Deploy" if what == "deploy" else "Rollback"
        _started(self, request, verb, [(job, f"{release.name} on {node.name}")])
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))

    def logs_view(self, request, pk):
        """Fetch the app's recent log lines (a logs job, secrets masked); its page shows them."""
        app = get_object_or_404(App, pk=pk)
        if not self.has_view_permission(request, app):
            raise PermissionDenied
        files = [f for f in request.POST.getlist("files") if f in LOG_FILES] or ["error", "app"]
        job = actions.logs(app.name, lines=200, files=files, actor_kind=ActorKind.USER,
                           actor=request.user.get_username())
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))

    def upload_view(self, request):
        """Deploy an uploaded app archive: checked and packed as `manage.py deploy` does, then the deploy job's
        page (a refusal is shown on the form: nothing was deployed)."""
        if not self.has_change_permission(request):
            raise PermissionDenied("deploying needs permission to change apps")
        form = UploadForm(request.POST or None, request.FILES or None)
        refused = None
        if request.method == "POST" and form.is_valid():
            try:
                job = self._deploy_upload(request, form.cleaned_data)
            except (AppIniError, ArchiveError, ReleaseRefused, InvalidNode, ConfigMissing, PermissionDenied,
                    actions.RolloutRefused) as exc:
                refused = f"nothing was deployed: {exc}"
            else:
                return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
        return TemplateResponse(request, "admin/records/app/upload.html", {
            **self.admin_site.each_context(request), "title": "Deploy an app archive", "form": form,
            "refused": refused, "opts": self.model._meta, "max_bytes": uploads.MAX_UPLOAD_BYTES,
        })

    def _deploy_upload(self, request, data):
        nodes = data["targets"]
        for node in nodes:
            check_node(node)  # refuse a bad node before anything is stored
        release = None
        try:
            release, warnings = uploads.release_from_upload(
                data["archive"], group=data.get("group"), may_create_app=self.has_add_permission(request))
            check_required_config(release.app, release)
        except (AppIniError, ArchiveError, ReleaseRefused, ConfigMissing) as exc:
            # What the archive holds was refused: the attempt is recorded, as a failed job no worker runs.
            job = actions.refuse_deploy(f"upload {data['archive'].name}", str(exc),
                                        app_name=release.app.name if release else "", nodes=nodes,
                                        actor_kind=ActorKind.USER, actor=request.user.get_username())
            raise ReleaseRefused(f"{exc} (recorded as job {job.pk})") from None
        for warning in warnings:
            self.message_user(request, f"app.ini: {warning}", messages.WARNING)
        if group_warning(release.app, data.get("group")):
            self.message_user(request, group_warning(release.app, data.get("group")), messages.WARNING)
        group = data.get("group")
        if group is not None and not data.get("nodes") and lb_steps.lb_node(group) is not None:
            # A group behind a balancer: rolled through it, one app node at a time (as manage.py deploy --group).
            job = actions.deploy_rolling(release.app.name, release.name, group, actor_kind=ActorKind.USER,
                                         actor=request.user.get_username())
            nodes = lb_steps.app_nodes(group)
        else:
            job = actions.deploy_to(release.app.name, release.name, nodes, max_parallel=data["max_parallel"],
                                    actor_kind=ActorKind.USER, actor=request.user.get_username())
        _started(self, request, f"Deploy of {release.app.name} {release.name} ({release.size} bytes)",
                 [(job, ", ".join(n.name for n in nodes))])
        return job

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if change and any(formset.model is Location and formset.has_changed() for formset in formsets):
            _front_door_after_edit(self, request, {form.instance.pk})

    @admin.action(description="Disable: maintenance page (503) at its locations", permissions=["change"])
    def disable(self, request, queryset):
        self._each_app(request, queryset, "disable", "Maintenance")

    @admin.action(description="Enable: end maintenance, serve the app again", permissions=["change"])
    def enable(self, request, queryset):
        self._each_app(request, queryset, "enable", "Enable")

    def _each_app(self, request, queryset, kind, verb):
        _started(self, request, verb, [
            (actions.app_job(kind, app.name, actor_kind=ActorKind.USER, actor=request.user.get_username()), app.name)
            for app in queryset])

    @admin.action(description="Apply config now (running releases get it, no restart)", permissions=["change"])
    def apply_config(self, request, queryset):
        names = sorted(queryset.values_list("name", flat=True))
        job = actions.apply_config(names, actor_kind=ActorKind.USER, actor=request.user.get_username())
        _started(self, request, "Config apply", [(job, ", ".join(names))])

    @admin.action(description="Back up data now (database and files)", permissions=["view"])
    def back_up(self, request, queryset):
        started = []
        for app in queryset:
            try:
                check_data_app(app.name)
            except DataRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            job = actions.backup(app.name, actor_kind=ActorKind.USER, actor=request.user.get_username())
            started.append((job, app.name))
        _started(self, request, "Backup", started)

    @admin.display(description="live")
    def live_list(self, obj):
        return ", ".join(f"{lr.release.name}@{lr.node.name}" for lr in obj.live.all())

    @admin.action(description="Roll back (to the previous release, on every node where it is live)",
                  permissions=["change"])
    def roll_back(self, request, queryset):
        started = []
        for app in queryset:
            for live in app.live.select_related("node"):
                try:
                    job = actions.rollback(app.name, live.node, actor_kind=ActorKind.USER,
                                           actor=request.user.get_username())
                except InvalidNode as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                    continue
                started.append((job, live.node.name))
        _started(self, request, "Rollback", started)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("locations", "live__release", "live__node")

    @admin.display(description="locations")
    def locations_list(self, obj):
        return ", ".join(str(loc) for loc in obj.locations.all())


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["app", "name", "version", "short_sha", "size", "created_at"]
    list_filter = ["app"]
    search_fields = ["app__name", "name", "version", "artifact_sha256"]
    list_select_related = ["app"]
    readonly_fields = ["app", "name", "artifact_sha256", "size", "app_ini", "version", "created_at"]
    actions = ["deploy_to_node"]

    def has_add_permission(self, request):
        return False  # releases come from `manage.py deploy APP_DIR`, which packs and checks them

    @admin.action(description="Deploy to a node…", permissions=["change"])
    def deploy_to_node(self, request, queryset):
        """Ask which node, then start one deploy job per chosen release."""
        if "node" not in request.POST:
            return TemplateResponse(request, "admin/records/release/deploy.html", {
                **self.admin_site.each_context(request), "title": "Deploy to a node", "releases": queryset,
                "nodes": Node.objects.all(), "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            })
        node = Node.objects.filter(pk=request.POST["node"]).first()
        if node is None:
            self.message_user(request, "choose a node", messages.ERROR)
            return None
        started = []
        for release in queryset.select_related("app"):
            try:
                job = actions.deploy(release.app.name, release.name, node, actor_kind=ActorKind.USER,
                                     actor=request.user.get_username())
            except InvalidNode as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            started.append((job, str(release)))
        _started(self, request, "Deploy", started)
        return None

    @admin.display(description="artifact")
    def short_sha(self, obj):
        return obj.artifact_sha256[:12]


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    """Saving or deleting a location queues a front_door job for the nodes serving its app (and the app it
    was moved from)."""

    form = LocationForm
    list_display = ["host", "path", "app", "balancer_cache"]
    list_filter = ["balancer_cache", "app"]
    search_fields = ["host", "path", "app__name"]

    def save_model(self, request, obj, form, change):
        before = Location.objects.filter(pk=obj.pk).values_list("app_id", flat=True).first() if change else None
        super().save_model(request, obj, form, change)
        if form.changed_data:  # the front_door job also renders the group's balancer (its cache, too)
            _front_door_after_edit(self, request, {obj.app_id, before} - {None})

    def delete_model(self, request, obj):
        app_id = obj.app_id
        super().delete_model(request, obj)
        _front_door_after_edit(self, request, {app_id})

    def delete_queryset(self, request, queryset):
        app_ids = set(queryset.values_list("app_id", flat=True))
        super().delete_queryset(request, queryset)
        _front_door_after_edit(self, request, app_ids)


DOWNLOAD_BACKUP = "records.download_backup"


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    """Backups are made and removed by jobs (backup, checkpoints, retention); here they are read,
    downloaded (with records.download_backup, audited), and restored."""

    list_display = ["name", "app", "kind", "services_list", "release", "size", "job_link", "download", "created_at"]
    list_filter = ["kind", "app"]
    search_fields = ["name", "app__name", "release"]
    list_select_related = ["app"]
    readonly_fields = ["app", "name", "kind", "job_id", "release", "services", "size", "manifest_sha256",
                       "manifest", "uploaded_to", "created_at", "download"]
    actions = ["restore_into_its_app"]

    def has_add_permission(self, request):
        return False  # `manage.py backup APP`, the App action, or a schedule

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # keep_backups retention removes old ones, recorded in the job that did

    def get_urls(self):
        return [path("<int:pk>/download/", self.admin_site.admin_view(self.download_view),
                     name="records_backup_download")] + super().get_urls()

    @staticmethod
    def can_download(request):
        return request.user.has_perm(DOWNLOAD_BACKUP)

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if self.can_download(request) else [f for f in shown if f != "download"]

    def get_readonly_fields(self, request, obj=None):
        shown = super().get_readonly_fields(request, obj)
        return shown if self.can_download(request) else [f for f in shown if f != "download"]

    def download_view(self, request, pk):
        """The archive's bytes, to a user with records.download_backup; each download is an audit entry."""
        backup = Backup.objects.select_related("app").filter(pk=pk).first()
        if backup is None or not self.has_view_permission(request, backup):
            raise Http404("no such backup")
        if not self.can_download(request):
            raise PermissionDenied(f"downloading {backup.name} needs the permission {DOWNLOAD_BACKUP}")
        archive = archive_path(backup)
        if not archive.exists():
            raise Http404(f"the archive of {backup.name} is missing")
        response = FileResponse(open(archive, "rb"), as_attachment=True, filename=f"{backup.name}.tar",
                                content_type="application/x-tar")
        audit.record("download", backup, app=backup.app.name, size=archive.stat().st_size,
                     manifest_sha256=backup.manifest_sha256)
        return response

    @admin.display(description="archive")
    def download(self, obj):
        return format_html('<a href="{}">{}.tar</a>', reverse("admin:records_backup_download", args=[obj.pk]),
                           obj.name)

    @admin.display(description="services")
    def services_list(self, obj):
        return ", ".join(obj.services)

    @admin.display(description="job")
    def job_link(self, obj):
        if obj.job_id is None:
            return "-"
        return format_html('<a href="{}">job {}</a>', reverse("admin:jobs_job_change", args=[obj.job_id]), obj.job_id)

    @admin.action(description="Restore into its app (the data it replaces are kept as a checkpoint)",
                  permissions=["view"])
    def restore_into_its_app(self, request, queryset):
        if not request.user.has_perm("records.change_app"):
            self.message_user(request, "restoring replaces an app's data: it needs permission to change apps",
                              messages.ERROR)
            return
        started = []
        for backup in queryset.select_related("app"):
            try:
                check_data_app(backup.app.name)
            except DataRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            job = actions.restore(backup.app.name, backup.name, actor_kind=ActorKind.USER,
                                  actor=request.user.get_username())
            started.append((job, backup.name))
        _started(self, request, "Restore", started)


@admin.register(CronEntry)
class CronEntryAdmin(admin.ModelAdmin):
    """Cron entries come from the live release's app.ini [cron] (deploys write them); their schedule is
    the django-celery-beat periodic task linked here."""

    list_display = ["app", "name", "schedule", "target", "timeout", "release", "schedule_link", "last_run"]
    list_filter = ["app"]
    search_fields = ["app__name", "name", "target"]
    list_select_related = ["app", "periodic_task"]
    readonly_fields = ["app", "name", "schedule", "target", "timeout", "release", "schedule_link", "updated_at"]
    fields = readonly_fields
    actions = ["run_now"]

    def has_add_permission(self, request):
        return False  # a [cron] line in app.ini, then a deploy

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # removing the line from app.ini and deploying removes it

    @admin.display(description="beat schedule")
    def schedule_link(self, obj):
        if obj.periodic_task_id is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:django_celery_beat_periodictask_change",
                                                          args=[obj.periodic_task_id]), obj.periodic_task.name)

    @admin.display(description="last run")
    def last_run(self, obj):
        job = Job.objects.filter(kind="cron_run", target=f"cron:{obj.app.name}:{obj.name}").first()
        if job is None:
            return "never"
        return format_html('<a href="{}">job {} {}</a>', reverse("admin:jobs_job_change", args=[job.pk]), job.pk,
                           job.status)

    @admin.action(description="Run now (skipped if it is running already)", permissions=["view"])
    def run_now(self, request, queryset):
        if not request.user.has_perm("records.change_app"):
            self.message_user(request, "running a cron entry runs app code: it needs permission to change apps",
                              messages.ERROR)
            return
        started = [(actions.cron_run(e.app.name, e.name, actor_kind=ActorKind.USER,
                                     actor=request.user.get_username()), f"{e.app.name} {e.name}")
                   for e in queryset.select_related("app")]
        _started(self, request, "Cron run", started)
