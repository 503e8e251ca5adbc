"""Stop what an interrupted job left running on a node: programs of releases nobody wants.

A deploy killed between `start` and `activate` (or a host lost while it
stopped the new release) leaves that release's gunicorn under supervisord
for good. reconcile() is told which releases of which apps must keep
running (the control plane knows: the live ones and those a running job
is starting) and, in one round trip, stops and forgets every other
program of those apps: their supervisor program, its config file, and the
half-written config a killed start left (`<program>.conf.tmp`).

Programs are named program_name(app, release) = app-<app>-<release>. A
name is given to the longest app name (of all the apps the control plane
knows) it starts with, so `app-a-b-r1` is release r1 of app `a-b` and never
release b-r1 of app `a`; names of no known app are reported, not touched.
"""

import json

from . import hostside
from .release import PYTHON, ReleaseError, validate_release
from .steps import run_logged
from .transport import CommandFailed
from .validate import validate_name

# Each stop waits for gunicorn's graceful shutdown (stopwaitsecs = 30): room for several.
TIMEOUT = 600


class ReconcileError(ReleaseError):
    """The node's programs could not be reconciled; the message says why."""


def reconcile_programs(t, emit, layout, keep: dict, known_apps) -> dict:
    """Stop every program of the apps in `keep` ({app: [releases to keep running]}) not kept there.

    `known_apps` are all the app names the control plane has (to read
    program names without mistaking one app's for another's). Returns
    {"stopped": [{"app", "release", "program", "state", "files"}], "kept": [program],
    "unknown": [program names of no known app, left alone]}.
    """
    keep = {validate_name(app, "app"): sorted({validate_release(r) for r in releases})
            for app, releases in keep.items()}
    known = sorted({validate_name(app, "app") for app in known_apps} | set(keep))
    argv = [PYTHON, "-I", "-c", hostside.source("reconcile"), layout.supervisor_sock, layout.supervisor_programs,
            json.dumps(keep, sort_keys=True), json.dumps(known)]
    try:
        r = run_logged(t, emit, argv, step="reconcile", timeout=TIMEOUT)
    except CommandFailed as exc:
        raise ReconcileError(exc.result.stderr.strip().splitlines()[-1] if exc.result.stderr.strip()
                             else f"reconciling the programs failed (exit {exc.result.rc})") from None
    return json.loads(r.stdout)
