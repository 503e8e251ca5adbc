"""The tasks API: apps queue work for later with one authenticated POST.

    POST /api/apps/<app>/tasks
    Authorization: Bearer $TOPPCLOUD_TASK_TOKEN
    Content-Type: application/json
    {"path": "/tasks/send-mail", "payload": {...}, "countdown": 30,
     "idempotency_key": "order-42", "max_attempts": 5, "timeout": 60}

Each accepted request is a `task` job (jobs/flows/tasks.py). Answers are
JSON: 202 with the new job, 200 with the existing job for a known
idempotency key, or an error that names the problem: 400 (bad field), 401
(no token), 403 (a token that is not this app's), 405, 409 (a known
idempotency key with another path or payload), 413 (too large), 415 (not
JSON). A refused request creates nothing.
"""

import json
import math
import re
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from jobs import actions
from jobs.steps.environment import task_token_matches
from jobs.models import Job, TaskKey
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App

FIELDS = {"path", "payload", "countdown", "eta", "idempotency_key", "max_attempts", "timeout"}
MAX_DELAY = timedelta(days=30)
MAX_TIMEOUT = 3600
_PATH_RE = re.compile(r"/[!-~]{0,1999}")
_KEY_RE = re.compile(r"[!-~]{1,200}")


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def error(status, message, **headers):
    response = JsonResponse({"error": message}, status=status)
    for key, value in headers.items():
        response[key.replace("_", "-")] = value
    return response


@csrf_exempt
def tasks(request, app):
    if request.method != "POST":
        return error(405, "use POST to queue a task", Allow="POST")
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[len("Bearer "):].strip():
        return error(401, "no token: send `Authorization: Bearer $TOPPCLOUD_TASK_TOKEN` (the app's environment "
                          "has it)", WWW_Authenticate='Bearer realm="toppcloud tasks"')
    record = App.objects.filter(name=app).first()
    if record is None or not task_token_matches(record, auth[len("Bearer "):].strip()):
        # The same answer for an unknown app: a token never tells which apps exist.
        return error(403, f"this token is not the task token of app {app!r}")
    try:
        task = parse_request(request)
        job, created = queue(record, task)
    except Refused as exc:
        return error(exc.status, str(exc))
    return JsonResponse({"job": job.pk, "status": job.status, "created": created,
                         "run_after": job.run_after.isoformat() if job.run_after else None},
                        status=202 if created else 200)


def parse_request(request):
    """The task the request asks for, every field checked; Refused names the first problem."""
    limit = settings.TOPPCLOUD_TASK_MAX_PAYLOAD
    length = request.headers.get("Content-Length") or "0"
    length = int(length) if length.isdigit() else 0
    if length > limit + 4096:  # the payload plus room for the other fields
        raise Refused(413, f"the request has {length} bytes; a task's payload is limited to {limit} bytes")
    if request.content_type != "application/json":
        raise Refused(415, f"send the task as JSON (Content-Type: application/json), not {request.content_type!r}")
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object with at least a path")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise Refused(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")

    path = body.get("path")
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path) or ".." in path.split("?")[0].split("/") \
            or path.startswith("//"):
        raise Refused(400, f"path {path!r} must be a URL path of the app starting with '/' (e.g. /tasks/send), "
                           "printable ASCII without spaces or '..' segments, at most 2000 characters")
    payload = body.get("payload")
    size = len(json.dumps(payload).encode())
    if size > limit:
        raise Refused(413, f"the payload has {size} bytes as JSON; a task's payload is limited to {limit} bytes")

    key = request.headers.get("Idempotency-Key")
    if "idempotency_key" in body:
        if key is not None and key != body["idempotency_key"]:
            raise Refused(400, "the Idempotency-Key header and the idempotency_key field differ")
        key = body["idempotency_key"]
    if key is not None and (not isinstance(key, str) or not _KEY_RE.fullmatch(key)):
        raise Refused(400, "idempotency_key must be 1 to 200 printable ASCII characters without spaces")

    return {
        "path": path, "payload": payload, "key": key,
        "run_after": _run_after(body),
        "max_attempts": _number(body, "max_attempts", settings.TOPPCLOUD_TASK_MAX_ATTEMPTS, 1, 50, whole=True),
        "timeout": _number(body, "timeout", 60, 1, MAX_TIMEOUT, whole=False),
    }


def _number(body, field, default, low, high, *, whole):
    value = body.get(field, default)
    ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        kind = "a whole number" if whole else "a number of seconds"
        raise Refused(400, f"{field} must be {kind} from {low} to {high}, got {value!r}")
    return value


def _run_after(body):
    if "countdown" in body and "eta" in body:
        raise Refused(400, "give countdown or eta, not both")
    now = timezone.now()
    if "countdown" in body:
        seconds = _number(body, "countdown", 0, 0, MAX_DELAY.total_seconds(), whole=False)
        return now + timedelta(seconds=seconds) if seconds else None
    if "eta" in body:
        eta = parse_datetime(body["eta"]) if isinstance(body["eta"], str) else None
        if eta is None or eta.tzinfo is None:
            raise Refused(400, f"eta {body['eta']!r} must be an ISO 8601 time with its UTC offset, "
                               "e.g. 2026-11-25T10:00:00Z")
        if eta - now > MAX_DELAY:
            raise Refused(400, f"eta {body['eta']} is more than {MAX_DELAY.days} days away")
        return eta if eta > now else None
    return None


def queue(app, task):
    """The task's job: a new one, or the one its idempotency key already names. (job, created)"""
    params = {"app": app.name, "path": task["path"], "payload": task["payload"],
              "max_attempts": task["max_attempts"], "timeout": task["timeout"]}
    if task["key"] is not None:
        params["idempotency_key"] = task["key"]
        existing = TaskKey.objects.filter(app=app, key=task["key"]).select_related("job").first()
        if existing is not None:
            return _same_request(existing.job, params), False
    try:
        with transaction.atomic():
            job = actions.task(app.name, params, run_after=task["run_after"], actor_kind=ActorKind.API,
                               actor=f"task token of {app.name}")
            if task["key"] is not None:
                TaskKey.objects.create(app=app, key=task["key"], job=job)
    except IntegrityError:  # the same key at the same moment: the other request's job won
        return _same_request(Job.objects.get(pk=TaskKey.objects.get(app=app, key=task["key"]).job_id), params), False
    return job, True


def _same_request(job, params):
    """The job a known key names, if it was asked for with the same path and payload."""
    if (job.params.get("path"), job.params.get("payload")) != (params["path"], params["payload"]):
        raise Refused(409, f"idempotency key {params['idempotency_key']!r} already names job {job.pk}, "
                           f"a task of {job.params.get('path')} with another payload or path; use a new key")
    return job
