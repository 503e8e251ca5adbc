"""Jobs in the admin: read-only, the event timeline on each job's page; beat's schedules guarded (jobs/beat.py)."""

from django.contrib import admin, messages
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from django_celery_beat.admin import (ClockedScheduleAdmin, CrontabScheduleAdmin, IntervalScheduleAdmin,
                                      PeriodicTaskAdmin, PeriodicTaskForm, SolarScheduleAdmin)
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from jobs import beat, records_admin  # noqa: F401 (registers the records' job-starting pages)
from jobs.models import DeadLetter, Job
from jobs.engine.states import TERMINAL


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


# --- django-celery-beat: its permissions never reach toppcloud's own tasks (jobs/beat.py) -------------------

class GuardedPeriodicTaskForm(PeriodicTaskForm):
    """Beat's form, refusing a task the user may not schedule (get_form sets `user`)."""

    user = None

    def clean(self):
        data = super().clean()
        reason = beat.refusal(self.user, data.get("task"))
        if reason:
            self.add_error("regtask" if data.get("regtask") else "task", reason)
        return data


class GuardedMixin:
    """Schedules that run a task the user may not schedule are read-only to them, and no bulk action
    (run, enable, disable, toggle, delete) touches them."""

    def tasks_of(self, obj):
        raise NotImplementedError

    def _refusals(self, request, objs):
        return sorted({f"{task.name}: {reason}" for obj in objs for task in self.tasks_of(obj)
                       for reason in [beat.refusal(request.user, task.task)] if reason})

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not (obj and self._refusals(request, [obj]))

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not (obj and self._refusals(request, [obj]))

    def get_actions(self, request):
        return {name: (self._guarded(func), name, description)
                for name, (func, name, description) in super().get_actions(request).items()}

    def _guarded(self, func):
        def action(modeladmin, request, queryset):
            refusals = self._refusals(request, queryset)
            if refusals:
                self.message_user(request, "Nothing was done: " + "; ".join(refusals), messages.ERROR)
                return None
            return func(modeladmin, request, queryset)
        return action


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class GuardedPeriodicTaskAdmin(GuardedMixin, PeriodicTaskAdmin):
    form = GuardedPeriodicTaskForm

    def tasks_of(self, obj):
        return [obj]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})


# Deleting a schedule deletes the periodic tasks using it (CASCADE); changing it moves their runs.
for _model, _admin in [(CrontabSchedule, CrontabScheduleAdmin), (IntervalSchedule, IntervalScheduleAdmin),
                       (SolarSchedule, SolarScheduleAdmin), (ClockedSchedule, ClockedScheduleAdmin)]:
    admin.site.unregister(_model)
    admin.site.register(_model, type(f"Guarded{_admin.__name__}", (GuardedMixin, _admin), {
        "tasks_of": lambda self, obj: obj.periodictask_set.all()}))
