from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

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


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "locations_list", "created_at"]
    list_filter = ["group"]
    search_fields = ["name", "description", "locations__host"]
    inlines = [LocationInline]

    @admin.display(description="locations")
    def locations_list(self, obj):
        return ", ".join(str(loc) for loc in obj.locations.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("locations")


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["app", "name", "version", "short_sha", "created_at"]
    list_filter = ["app"]
    search_fields = ["app__name", "name", "version", "artifact_sha256"]
    list_select_related = ["app"]

    @admin.display(description="artifact")
    def short_sha(self, obj):
        return obj.artifact_sha256[:12]


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ["host", "path", "app"]
    list_filter = ["app"]
    search_fields = ["host", "path", "app__name"]
