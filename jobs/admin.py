"""Jobs in the admin: read-only, the event timeline on each job's page; beat's schedules guarded (jobs/beat.py).

The job list and a job's page stay fast with a million events (bench/admin.py): the list counts at most
CappedPaginator.CAP rows, lists kinds and dates without reading the table, and a job's page reads only the
events it shows (jobs/job_page.py); the page updates itself from a small JSON endpoint while the job runs.
"""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import Truncator

from django_celery_beat.admin import (ClockedScheduleAdmin, CrontabScheduleAdmin, IntervalScheduleAdmin,
                                      PeriodicTaskAdmin, PeriodicTaskForm, SolarScheduleAdmin)
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from jobs import beat, job_page, records_admin  # noqa: F401 (records_admin registers the records' job-starting pages)
from jobs.engine import registry
from jobs.models import DeadLetter, Job


def format_duration(delta):
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def first_line(text):
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


class CappedPaginator(Paginator):
    """Counts at most CAP rows (COUNT over a subquery with a LIMIT): the job list never counts the whole table."""

    CAP = 10_000

    @cached_property
    def count(self):
        count = self.object_list.order_by()[:self.CAP + 1].count()
        self.capped = count > self.CAP
        return count

    capped = False


class KindFilter(admin.SimpleListFilter):
    """Job kinds from the registry, not a SELECT DISTINCT over every job."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [(kind, kind) for kind in sorted(registry.KINDS)]

    def queryset(self, request, queryset):
        return queryset.filter(kind=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "target", "status_badge", "outcome", "actor_display", "attempt",
                    "duration_display", "queued_at"]
    list_filter = ["status", KindFilter, "actor_kind", ("queued_at", admin.DateFieldListFilter)]
    search_fields = ["=id", "target", "actor", "kind", "summary", "error"]
    date_hierarchy = None  # its year/month links are a scan of every job; the queued_at filter needs none
    list_per_page = 50
    paginator = CappedPaginator
    show_full_result_count = False  # no second COUNT of the whole table under a filter
    show_facets = admin.ShowFacets.NEVER  # "Show counts" would COUNT every filter's choices over every job
    change_form_template = "admin/jobs/job_change_form.html"
    fields = ["kind", "target", "status_live", "actor_kind", "actor", "parent_link", "attempt", "resends", "worker",
              "queued_at", "started_at", "finished_at", "duration_display", "summary", "error", "params",
              "result", "last_seq", "last_hash"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # events are append-only; the database refuses it too

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_events"
        return [path("<int:object_id>/events/", self.admin_site.admin_view(self.events_view), name=name),
                *super().get_urls()]

    def live_url(self, obj):
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_events", args=[obj.pk])

    def events_view(self, request, object_id):
        """The job page's poll: status and new events as JSON, to whoever may view the job."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = get_object_or_404(self.get_queryset(request), pk=object_id)
        return job_page.events_view(request, job)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["timeline"] = job_page.timeline(request, obj, live_url=self.live_url(obj))
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        colour = {"succeeded": "#2e7d32", "failed": "#c62828", "lost": "#6a1b9a", "running": "#1565c0"}
        return format_html('<b style="color:{}">{}</b>', colour.get(obj.status, "#555"), obj.status)

    @admin.display(description="status")
    def status_live(self, obj):
        return job_page.status_element(obj, self.live_url(obj))

    @admin.display(description="summary or error")
    def outcome(self, obj):
        """The error's first line (in red) or the summary's, cut short; the whole text in the title."""
        text = obj.error or obj.summary
        if not text:
            return ""
        line = Truncator(first_line(text)).chars(100)
        if obj.error:
            return format_html('<span class="job-error" title="{}" style="color:#c62828">{}</span>', text, line)
        return format_html('<span class="job-summary" title="{}">{}</span>', text, line)

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


@admin.register(DeadLetter)
class DeadLetterAdmin(JobAdmin):
    """Tasks whose every attempt failed: each attempt is in the timeline; Retry queues the task again."""

    list_display = ["id", "target", "attempt", "outcome", "queued_at", "finished_at"]
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
