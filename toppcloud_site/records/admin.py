from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from jobs.models import LiveRelease
from toppcloud_site.records.models import App, Location, Node, Release, ServerGroup


@admin.register(ServerGroup)
class ServerGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "node_count", "app_count", "created_at"]
    search_fields = ["name", "description"]

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
    actions = ["set_up_nodes", "ping_nodes"]

    @admin.display(description="ssh", ordering="address")
    def endpoint(self, obj):
        if obj.transport == Node.Transport.LOCAL:
            return "local"
        return f"{obj.ssh_user}@{obj.address}:{obj.ssh_port}"

    @admin.display(description="OS")
    def os(self, obj):
        return obj.facts.get("os", "") if obj.facts else ""

    def _start(self, request, queryset, kind, verb):
        from jobs.nodes import InvalidNode, submit_node_job
        from jobs.states import ActorKind

        started = []
        for node in queryset:
            try:
                job = submit_node_job(kind, node, actor_kind=ActorKind.USER, actor=request.user.get_username())
            except InvalidNode as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            started.append((reverse("admin:jobs_job_change", args=[job.pk]), f"job {job.pk} ({node.name})"))
        if started:
            links = format_html_join(", ", '<a href="{}">{}</a>', started)
            self.message_user(request, format_html("{} started: {}", verb, links), messages.SUCCESS)

    @admin.action(description="Set up node", permissions=["change"])
    def set_up_nodes(self, request, queryset):
        self._start(request, queryset, "setup_node", "Setup")

    @admin.action(description="Ping node", permissions=["view"])
    def ping_nodes(self, request, queryset):
        self._start(request, queryset, "ping_node", "Ping")


class LocationInline(admin.TabularInline):
    model = Location
    extra = 0


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
    list_display = ["name", "group", "locations_list", "live_list", "created_at"]
    list_filter = ["group"]
    search_fields = ["name", "description", "locations__host"]
    inlines = [LocationInline, LiveInline]
    actions = ["roll_back"]

    @admin.display(description="live")
    def live_list(self, obj):
        return ", ".join(f"{lr.release.name}@{lr.node.name}" for lr in obj.live.all())

    @admin.action(description="Roll back (to the previous release, on every node where it is live)",
                  permissions=["change"])
    def roll_back(self, request, queryset):
        from jobs.nodes import InvalidNode, submit_node_job
        from jobs.states import ActorKind

        started = []
        for app in queryset:
            for live in app.live.select_related("node"):
                try:
                    job = submit_node_job("rollback", live.node, actor_kind=ActorKind.USER,
                                          actor=request.user.get_username(), target=f"app:{app.name}@{live.node.name}",
                                          params={"app": app.name, "node": live.node.name})
                except InvalidNode as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                    continue
                started.append((reverse("admin:jobs_job_change", args=[job.pk]), f"job {job.pk} ({live.node.name})"))
        if started:
            self.message_user(request, format_html("Rollback started: {}", format_html_join(
                ", ", '<a href="{}">{}</a>', started)), messages.SUCCESS)

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
        from django.template.response import TemplateResponse

        from jobs.nodes import InvalidNode, submit_node_job
        from jobs.states import ActorKind

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
                job = submit_node_job("deploy", node, actor_kind=ActorKind.USER, actor=request.user.get_username(),
                                      target=f"app:{release.app.name}@{node.name}",
                                      params={"app": release.app.name, "release": release.name, "node": node.name})
            except InvalidNode as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            started.append((reverse("admin:jobs_job_change", args=[job.pk]), f"job {job.pk} ({release})"))
        self.message_user(request, format_html("Deploy started: {}", format_html_join(
            ", ", '<a href="{}">{}</a>', started)), messages.SUCCESS)
        return None

    @admin.display(description="artifact")
    def short_sha(self, obj):
        return obj.artifact_sha256[:12]


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ["host", "path", "app"]
    list_filter = ["app"]
    search_fields = ["host", "path", "app__name"]
