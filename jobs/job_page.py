"""The job page's timeline: events as rows a person reads, and the endpoint that feeds it live.

What a row shows is built here, not in the template: a host program's argv
is shown by its name (nodeops.hostside.label), never its source, and every
string is redacted again on the way out (a secret registered after an event
was written is masked on the page too). A huge job shows its last
PAGE_SIZE events, with links to earlier ones and to all.
"""

import json
from html import escape

from django.http import JsonResponse
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from jobs.engine.redact import redact, redact_text
from jobs.engine.reducer import OUTPUT_KEYS
from jobs.engine.states import TERMINAL, Kind
from jobs.models import JobEvent
from nodeops import hostside

PAGE_SIZE = 200     # events on the job page before "earlier events"
POLL_BATCH = 500    # events per answer of the live endpoint
ALL_LIMIT = 20_000  # "show all" up to this many events; past it, pages (and `manage.py jobs show ID`)
_MAX_ARG = 200      # an argv element longer than this (or of several lines) is shown by its size


def format_seconds(seconds):
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def shown_argv(argv):
    """argv as the page shows it: host programs by name, any other long or multi-line element by its size."""
    if not isinstance(argv, list):
        return argv
    argv = hostside.label([str(a) for a in argv])
    shown = []
    for i, arg in enumerate(argv):
        if "\n" in arg or len(arg) > _MAX_ARG:
            lines = arg.count("\n") + 1
            what = "program" if i and argv[i - 1] == "-c" else "text"
            first = next((line.strip().strip('"\'#').strip() for line in arg.splitlines() if line.strip()), "")
            shown.append(f"<{what} of {lines} lines: {first[:60]}>" if first else f"<{what} of {lines} lines>")
        else:
            shown.append(arg)
    return shown


def shown_data(data):
    """The event's data as the page shows it: redacted, argv labelled."""
    data = redact(data)
    if isinstance(data, dict) and "argv" in data:
        data = {**data, "argv": shown_argv(data["argv"])}
    return data


class Row:
    """One event as a row of the timeline."""

    def __init__(self, event, first_at):
        self.event = event
        self.seq = event.seq
        self.at = event.at
        self.kind = event.kind
        self.actor = event.actor
        self.data = data = shown_data(event.data)
        self.step = data.get("step") if isinstance(data.get("step"), str) else ""
        self.offset = format_seconds((event.at - first_at).total_seconds()) if first_at else ""
        self.failed = data.get("ok") is False or event.kind in (Kind.FAILED, Kind.LOST)
        argv = data.get("argv")
        self.command = " ".join(argv) if isinstance(argv, list) else ""
        self.outputs = [(key, data[key]) for key in OUTPUT_KEYS if isinstance(data.get(key), str) and data[key]]
        self.text = [data[key] for key in ("reason", "summary") if isinstance(data.get(key), str) and data[key]]
        self.error = data.get("error") if isinstance(data.get("error"), str) else ""
        self.depth = 0
        self.duration = format_seconds(data.get("seconds")) if isinstance(data.get("seconds"), (int, float)) else ""
        self.running_since = None  # a step still open: the page counts its elapsed time up
        self.closes = None         # a step.finished: the step it ends

    @property
    def is_step_start(self):
        return self.kind == Kind.STEP_STARTED

    @property
    def is_step_end(self):
        return self.kind == Kind.STEP_FINISHED


def rows(events, first_at, job_running):
    """Rows for events (in seq order): each step.started paired with its step.finished, events in a step
    indented, a step not finished while the job runs marked running. (The page's script does the same for
    the rows the live endpoint sends.)"""
    open_steps, out = [], []
    for event in events:
        row = Row(event, first_at)
        if row.is_step_end:
            start = next((r for r in reversed(open_steps) if r.step == row.step), None)
            if start is not None:
                open_steps.remove(start)
                start.duration = row.duration
                start.failed = row.failed
            row.closes = row.step
        row.depth = len(open_steps)
        if row.is_step_start:
            open_steps.append(row)
        out.append(row)
    if job_running:
        for start in open_steps:
            start.running_since = start.at
    return out


def render_rows(rows):
    """The rows' HTML. Built with html.escape, not a template or format_html: a page of 200 events is
    rendered in a few milliseconds (bench/admin.py). Every value goes through esc()."""
    return mark_safe("".join(_row_html(r) for r in rows))


def esc(value):
    return escape(str(value), quote=True)


def _row_html(r):
    classes = f"tl-row tl-depth-{min(r.depth, 2)}" + (" tl-step" if r.is_step_start else "") + (
        " tl-failed" if r.failed else "")
    attrs = f' data-step-open="{esc(r.step)}"' if r.is_step_start else ""
    if r.closes is not None:
        attrs = (f' data-step-close="{esc(r.closes)}" data-duration="{esc(r.duration)}"'
                 f' data-ok="{"false" if r.failed else "true"}"')
    if r.running_since:
        duration = f'<span class="tl-running" data-running-since="{esc(r.running_since.isoformat())}">running</span>'
    elif r.duration:
        duration = esc(r.duration)
    elif r.is_step_start:
        duration = '<span class="tl-open">not finished</span>'
    else:
        duration = ""
    what = f"<code>{esc(r.kind)}</code>" + (f" <b>{esc(r.step)}</b>" if r.step else "") + (
        ' <span class="tl-bad">failed</span>' if r.failed else "")
    details = []
    if r.command:
        details.append(f'<code class="tl-command">{esc(r.command)}</code>')
        if r.data.get("rc") is not None:
            details.append(f" → rc {esc(r.data['rc'])}")
    details += [f"<div>{esc(t)}</div>" for t in r.text]
    if r.error:
        details.append(f'<div class="tl-bad">{esc(r.error)}</div>')
    if r.outputs:
        outputs = "".join(f'<pre class="tl-out tl-{esc(key)}">{esc(out)}</pre>' for key, out in r.outputs)
        details.append(f"<details{' open' if r.failed else ''}><summary>output</summary>{outputs}</details>")
    data = json.dumps(r.data, indent=1, sort_keys=True, ensure_ascii=False)
    details.append(f'<details class="tl-data"><summary>data</summary><pre>{esc(data)}</pre>'
                   f"<small>by {esc(r.actor)} · hash {esc(r.event.hash[:16])}…</small></details>")
    at = timezone.localtime(r.at)
    return (f'<tr id="event-{r.seq}" class="{classes}" data-seq="{r.seq}"{attrs}><td class="tl-seq">{r.seq}</td>'
            f'<td class="tl-at" title="{esc(at.isoformat(timespec="microseconds"))}">{at:%H:%M:%S}'
            f"<small> +{esc(r.offset)}</small></td><td class=\"tl-what\">{what}</td>"
            f'<td class="tl-duration">{duration}</td><td class="tl-details">{"".join(details)}</td></tr>\n')


def timeline(request, job, *, live_url):
    """The timeline's HTML for the job page: the last PAGE_SIZE events, or those before ?before=SEQ, or all."""
    total = job.last_seq  # seq is gapless per job: no COUNT over the events
    show_all = request.GET.get("events") == "all" and total <= ALL_LIMIT
    before = _int(request.GET.get("before"))
    events = JobEvent.objects.filter(job_id=job.pk)
    if show_all:
        window = list(events.order_by("seq"))
    else:
        if before is not None:
            events = events.filter(seq__lt=before)
        window = list(events.order_by("-seq")[:PAGE_SIZE])[::-1]
    first_seq = window[0].seq if window else 1
    last_seq = window[-1].seq if window else 0
    total = max(total, last_seq)  # events written since the job's row was read are shown too
    running = job.status not in TERMINAL
    live = running and before is None  # the page with the newest events grows; earlier pages stay as they are
    first_at = job.queued_at or (window[0].at if window else None)
    return render_to_string("admin/jobs/timeline.html", {
        "rows": render_rows(rows(window, first_at, running)), "job": job, "total": total, "first_seq": first_seq,
        "last_seq": last_seq, "earlier": first_seq > 1, "later": last_seq < total, "show_all": show_all,
        "page_size": PAGE_SIZE, "all_limit": ALL_LIMIT, "live": live, "live_url": live_url, "running": running,
    }, request=request)


def status_element(job, live_url):
    """The live status: id job-status, its text the status; data-live names the endpoint that updates it."""
    return format_html('<b id="job-status" class="job-status job-status-{}" data-live="{}" data-last-seq="{}" '
                       'data-terminal="{}">{}</b>', job.status, live_url, job.last_seq,
                       "true" if job.status in TERMINAL else "false", job.status)


def events_view(request, job):
    """JSON for the page's poll: the job's status and the rows of its events after ?after=SEQ."""
    after = _int(request.GET.get("after")) or 0
    batch = list(JobEvent.objects.filter(job_id=job.pk, seq__gt=after).order_by("seq")[:POLL_BATCH])
    first_at = job.queued_at or (batch[0].at if batch else None)
    running = job.status not in TERMINAL
    html = render_rows(rows(batch, first_at, running))
    last_seq = batch[-1].seq if batch else after
    return JsonResponse({
        "job": job.pk, "status": job.status, "terminal": job.status in TERMINAL,
        "last_seq": last_seq, "more": last_seq < job.last_seq, "rows": html,
        "summary": redact_text(job.summary), "error": redact_text(job.error),
    })


def _int(value):
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
