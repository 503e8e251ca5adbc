"""The records' admin pages whose actions and edits start jobs: server groups (secret rotation), nodes
(setup, ping, front door), apps (rollback, backup, config apply, disable, enable; location edits render
the front door), releases (deploy), locations, backups (download, restore) and cron entries (run now).
Each action calls jobs/actions.py; admin URLs, action names and permissions are the records' own."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from jobs import actions
from jobs.steps.data import DataRefused, archive_path, check_data_app
from jobs.engine.states import ActorKind
from jobs.models import Job, LiveRelease
from jobs.nodes import InvalidNode
from toppcloud_site.records import audit
from toppcloud_site.records.admin import LocationForm, LocationInline, ServiceInline
from toppcloud_site.records.models import App, Backup, CronEntry, Location, Node, Release, ServerGroup


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
    list_display = ["name", "node_count", "app_count", "database_node", "created_at"]
    search_fields = ["name", "description"]
    actions = ["rotate_shared_secret"]

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


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "transport", "endpoint", "root", "http_port", "set_up_at", "os"]
    list_filter = ["group", "transport"]
    search_fields = ["name", "address", "root"]
    readonly_fields = ["facts", "set_up_at", "created_at"]
    actions = ["set_up_nodes", "ping_nodes", "render_front_door"]

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


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "locations_list", "live_list", "maintenance", "created_at"]
    list_filter = ["group", "maintenance"]
    search_fields = ["name", "description", "locations__host"]
    inlines = [LocationInline, LiveInline, ServiceInline]
    actions = ["roll_back", "back_up", "apply_config", "disable", "enable"]
    readonly_fields = ["maintenance"]  # the Disable / Enable actions: jobs that render the front door too

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
    list_display = ["host", "path", "app"]
    list_filter = ["app"]
    search_fields = ["host", "path", "app__name"]

    def save_model(self, request, obj, form, change):
        before = Location.objects.filter(pk=obj.pk).values_list("app_id", flat=True).first() if change else None
        super().save_model(request, obj, form, change)
        if form.has_changed():
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
