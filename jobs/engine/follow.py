"""Watching a job from a terminal: live events, progress, exit status."""

import json
import time

from django.db import close_old_connections
from tqdm import tqdm

from jobs.models import Job, JobEvent
from jobs.engine.states import TERMINAL, TRANSITIONS, Kind, Status


def describe(event):
    """One human line for an event."""
    d = event.data
    if event.kind == Kind.QUEUED:
        return f"queued by {d['actor_kind']}:{d['actor']} ({d['kind']} {d['target']})"
    if event.kind == Kind.STARTED:
        return f"started, attempt {d['attempt']} on {d['worker']}"
    if event.kind == "step.started":
        return f"{d['step']} …"
    if event.kind == "step.finished":
        result = "ok" if d.get("ok") else f"FAILED: {d.get('error', '')}"
        return f"{d['step']} {result} ({d.get('seconds', 0):.2f}s)"
    if event.kind == Kind.COMMAND:
        command = " ".join(d.get("argv", [])).replace("\n", " ")
        if len(command) > 100:
            command = command[:97] + "..."
        return f"$ {command} → rc {d.get('rc')}"
    if event.kind == Kind.SUCCEEDED:
        return f"succeeded: {d.get('summary', '')}"
    if event.kind == Kind.PROGRESS:
        return progress_line(d)
    text = d.get("reason") or d.get("error") or d.get("text") or d.get("summary") or ""
    return f"{event.kind} {text}".rstrip()


# Polling starts fast after each event and slows down while nothing comes, so the end of a job shows
# within milliseconds of it (most jobs end right after their last event), yet an idle follower asks
# the database only every POLL_MAX seconds.
POLL_MIN, POLL_MAX = 0.005, 0.1
_ENDS = frozenset(kind for kind, (_, to) in TRANSITIONS.items() if to in TERMINAL)


def follow(job_id, out, *, as_json=False, poll=POLL_MAX, timeout=None):
    """Print the job's events as they come until it ends; returns the final Job."""
    last_seq, steps_done, planned = 0, 0, None
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = _Bar(out, live=not as_json and _is_tty(out))
    wait, ended, checked = POLL_MIN, False, time.monotonic()
    while True:
        if time.monotonic() - checked > 1.0:  # a connection that broke meanwhile is dropped, once a second
            close_old_connections()           # (each call costs a round trip: conn_health_checks)
            checked = time.monotonic()
        seen = last_seq
        for event in JobEvent.objects.filter(job_id=job_id, seq__gt=last_seq).order_by("seq"):
            last_seq = event.seq
            ended = ended or event.kind in _ENDS
            if event.kind == "plan":
                planned = len(event.data.get("steps", []))
            if event.kind == "step.finished":
                steps_done += 1
            if as_json:
                out.write(json.dumps({"job": job_id, "seq": event.seq, "at": event.at.isoformat(),
                                      "kind": event.kind, "actor": event.actor, "data": event.data}))
            elif event.kind == "output":
                bar.close()
                _write_raw(out, event.data.get("output", ""))  # a command's output, as it printed it
            else:
                step_count = f"[{steps_done}/{planned}]" if planned else f"[{steps_done}]"
                bar.write(f"{event.at:%H:%M:%S} {step_count:>7} {describe(event)}", event.kind == Kind.PROGRESS)
        if ended:
            bar.close()
            return Job.objects.get(pk=job_id)
        if deadline is not None and time.monotonic() > deadline:
            bar.close()
            return Job.objects.get(pk=job_id)
        wait = POLL_MIN if last_seq > seen else min(poll, wait * 1.5)
        time.sleep(wait)


def progress_line(data):
    """What a progress event says, as tqdm puts it: `venv: 12 packages [00:03, 4.00 packages/s]`,
    `restore:  45% 4.29M/9.54M [00:01<00:01, 3.21MB/s]` (an estimate when the total is known)."""
    unit = data.get("unit", "")
    in_bytes = unit == "bytes"
    line = tqdm.format_meter(data.get("done", 0), data.get("total") or None, data.get("seconds", 0.0), ncols=0,
                             prefix=data.get("what", "progress"), unit="B" if in_bytes else f" {unit}",
                             unit_scale=in_bytes, unit_divisor=1024 if in_bytes else 1000)
    if data.get("rows") is not None:
        line += f", {data['rows']:,} rows"
    return line + (f" ({data['text']})" if data.get("text") else "")


class _Bar:
    """Progress events on a terminal overwrite one line; everything else gets its own."""

    def __init__(self, out, live):
        self.out, self.live, self.open = out, live, False

    def write(self, line, is_progress=False):
        if self.live and is_progress:
            _write_raw(self.out, "\r" + line + "\x1b[K")
            self.open = True
            return
        self.close()
        self.out.write(line)

    def close(self):
        if self.open:
            _write_raw(self.out, "\n")
            self.open = False


def _is_tty(out):
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _write_raw(out, text):
    try:
        out.write(text, ending="")  # a management command's OutputWrapper
    except TypeError:
        out.write(text)
    out.flush()


def exit_code(job):
    return 0 if job.status == Status.SUCCEEDED else 1
