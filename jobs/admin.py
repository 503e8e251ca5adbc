"""Jobs in the admin: read-only, the event timeline on each job's page."""

from django.contrib import admin
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from jobs.models import DeadLetter, Job
from jobs.states import TERMINAL


def format_duration(delta):
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "target", "status_badge", "actor_display", "attempt", "duration_display",
                    "queued_at"]
    list_filter = ["status", "kind", "actor_kind"]
    search_fields = ["=id", "target", "actor", "kind", "summary", "error"]
    date_hierarchy = "queued_at"
    list_per_page = 50
    fields = ["kind", "target", "status", "actor_kind", "actor", "parent_link", "attempt", "resends", "worker",
              "queued_at", "started_at", "finished_at", "duration_display", "summary", "error", "params",
              "result", "last_seq", "last_hash", "timeline"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # events are append-only; the database refuses it too

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        colour = {"succeeded": "#2e7d32", "failed": "#c62828", "lost": "#6a1b9a", "running": "#1565c0"}
        return format_html('<b style="color:{}">{}</b>', colour.get(obj.status, "#555"), obj.status)

    @admin.display(description="actor", ordering="actor")
    def actor_display(self, obj):
        return f"{obj.actor_kind}:{obj.actor}"

    @admin.display(description="duration")
    def duration_display(self, obj):
        return format_duration(obj.duration)

    @admin.display(description="parent")
    def parent_link(self, obj):
        if obj.parent_id is None:
            return "—"
        return format_html('<a href="{}">job {}</a>', reverse("admin:jobs_job_change", args=[obj.parent_id]),
                           obj.parent_id)

    @admin.display(description="timeline")
    def timeline(self, obj):
        events = list(obj.events.order_by("seq"))
        return render_to_string("admin/jobs/timeline.html", {
            "events": events, "finished": obj.status in TERMINAL, "first_at": events[0].at if events else None,
        })


@admin.register(DeadLetter)
class DeadLetterAdmin(JobAdmin):
    """Tasks whose every attempt failed: each attempt is in the timeline; Retry queues the task again."""

    list_display = ["id", "target", "attempt", "error", "queued_at", "finished_at"]
    list_filter = []
    date_hierarchy = None
    actions = ["retry"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind="task", status="failed")

    @admin.action(description="Retry (a new task job with the same request)", permissions=["view"])
    def retry(self, request, queryset):
        from django.contrib import messages
        from django.utils.html import format_html_join

        from jobs.flows.tasks import retry_dead_letter

        if not request.user.has_perm("records.change_app"):
            self.message_user(request, "retrying a task runs app code: it needs permission to change apps",
                              messages.ERROR)
            return
        started = [(reverse("admin:jobs_job_change", args=[new.pk]), f"job {new.pk} (retry of {old.pk})")
                   for old in queryset for new in [retry_dead_letter(old, actor=request.user.get_username())]]
        self.message_user(request, format_html("Retry started: {}", format_html_join(
            ", ", '<a href="{}">{}</a>', started)), messages.SUCCESS)
